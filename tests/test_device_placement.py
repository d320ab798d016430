"""Every tensor an entry creates follows problem.device: each entry built and run for a `cuda` problem on a CPU machine.

A TorchFunctionMode runs device="cuda" calls on the CPU and remembers which tensors stand for device
memory. Any call that mixes a device tensor with a host tensor of one element or more is recorded: on
a GPU it would fail (or copy from the host at every call); it is what a missing `device=problem.device`
looks like. 0-dim host tensors are scalars, which CUDA ops accept.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import _engine_run_backward
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

import attention_zoo as z

# entries whose code runs only inside real CUDA kernels or compilers, which meta tensors cannot stand in for
NEEDS_REAL_KERNELS = {
    "triton_flash": "Triton kernels launch on real device memory",
    "xformers": "xformers dispatches on real CUDA kernels",
    "flex_sliding_window": "torch.compile of flex_attention generates code for a real device",
    "flex_global": "torch.compile of flex_attention generates code for a real device",
}
PROBLEMS = {
    "causal_gqa": z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=40, head_dim=16, causal=True, device="cuda"),
    "padded": z.Problem(batch=2, q_heads=2, q_len=40, head_dim=16, kv_valid_lens=(40, 23), device="cuda"),
    "causal_padded": z.Problem(
        batch=2, q_heads=2, q_len=40, head_dim=16, causal=True, kv_valid_lens=(40, 23), device="cuda"
    ),
}


def _names_cuda(value) -> bool:
    return (isinstance(value, str) and value.startswith("cuda")) or (
        isinstance(value, torch.device) and value.type == "cuda"
    )


def _on_host(value):
    return torch.device("cpu") if _names_cuda(value) else value


DEVICE_GETTERS = {torch.Tensor.device.__get__}


class CudaOnHost(TorchFunctionMode):
    """Runs device="cuda" code on the CPU, remembering which storages stand for device memory.

    A tensor is on the device when a call naming cuda made it, or when any of a call's inputs was on
    the device (ops keep their inputs' device). Every call that mixes device tensors with host
    tensors of one element or more is recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.device_storages: set[int] = set()
        self.empty_on_device: set[int] = set()  # ids of empty device tensors, which own no storage to tell by
        self.alive: list[torch.Tensor] = []  # keeps storages and ids alive, so no host tensor reuses them
        self.mixed: list[str] = []

    def on_device(self, tensor: torch.Tensor) -> bool:
        if tensor.numel() == 0:
            return id(tensor) in self.empty_on_device
        return tensor.untyped_storage().data_ptr() in self.device_storages

    def _put_on_device(self, tensor: torch.Tensor) -> None:
        self.alive.append(tensor)
        if tensor.numel() == 0:
            self.empty_on_device.add(id(tensor))
        else:
            self.device_storages.add(tensor.untyped_storage().data_ptr())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in DEVICE_GETTERS:  # code reading x.device sees where x stands, not the CPU it runs on
            on_device = self.on_device(args[0])
            return torch.device("cuda") if on_device else func(*args)
        if func is torch.device:  # torch.device("cuda") stays a CUDA device; the calls it reaches run on the host
            return func(*args, **(kwargs or {}))
        leaves = tree_flatten((args, kwargs or {}))[0]
        names_cuda = any(_names_cuda(x) for x in leaves)
        names_host = any(isinstance(x, str | torch.device) and str(x) == "cpu" for x in leaves)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        device_inputs = [t for t in tensors if self.on_device(t)]
        host_inputs = [tuple(t.shape) for t in tensors if not self.on_device(t) and t.dim() > 0 and t.numel() > 0]
        if device_inputs and host_inputs:
            self.mixed.append(f"{getattr(func, '__name__', func)} with host tensors of shapes {host_inputs}")
        result = func(*tree_map(_on_host, args), **tree_map(_on_host, kwargs or {}))
        if (names_cuda or device_inputs) and not names_host:
            for tensor in tree_flatten(result)[0]:
                if isinstance(tensor, torch.Tensor):
                    self._put_on_device(tensor)
        return result


CASES = [(name, shape) for name in z.list_impls() for shape in PROBLEMS]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_entry_keeps_its_tensors_on_the_problem_device(name: str, shape: str) -> None:
    if name in NEEDS_REAL_KERNELS:
        pytest.skip(f"{name}: {NEEDS_REAL_KERNELS[name]}")
    problem, entry = PROBLEMS[shape], z.get(name)
    cpu_twin = z.Problem(**{**problem.__dict__, "device": "cpu"})
    for mode in ("forward", "backward"):
        reason = entry.unsupported_reason(cpu_twin, mode)  # what the entry supports, asked without CUDA
        if reason:
            pytest.skip(f"{name}: {reason}")
    with CudaOnHost() as placement:
        impl = entry.builder(problem, **entry.resolve_hparams(entry.oracle_hparams))
        q, k, v = problem.make_inputs(requires_grad=True)
        out = impl(q, k, v)
        # the engine itself, not out.backward(): a torch function's own inner calls are not watched, and
        # the backward pass is the entry's code too
        _engine_run_backward(
            (out,), (torch.ones_like(out),), False, False, (), allow_unreachable=True, accumulate_grad=True
        )
    assert not placement.mixed, f"{name} mixes host and device tensors: {placement.mixed[:3]}"
    assert placement.on_device(out), f"{name} returned its output on the host"
    assert all(x.grad is not None for x in (q, k, v))
