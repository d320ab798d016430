"""Train the recall model on MQAR with one entry as its attention, then score it on held-out sequences.

A fixed budget: `steps` AdamW steps (one-cycle schedule: 10% warm-up to `learning_rate`, then cosine decay),
each on a fresh batch of `batch` MQAR sequences drawn from (seed, step); accuracy is the share of query
positions whose most likely next token is the right value, on `test_examples` sequences drawn from a seed no
training batch uses. Everything is seeded: the same cell gives the same model on the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch

import attention_zoo
from attention_zoo import Problem
from bench.tasks.model import RecallModel
from bench.tasks.mqar import IGNORE_INDEX, multiquery_ar

WARMUP_FRACTION = 0.1
FINAL_STEPS = 10  # loss_final is the mean training loss over the last this many steps
TEST_SEED_OFFSET = 2**40  # held-out sequences come from seeds at or above this; training steps below it


def _batch(problem: Problem, task: Mapping[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = multiquery_ar(
        problem.batch, problem.q_len, task["kv_pairs"], task["vocab_size"], task["power_a"], seed
    )
    return inputs.to(problem.device), labels.to(problem.device)


def train_recall(impl: str, hparams: Mapping[str, Any], problem: Problem, task: Mapping[str, Any], seed: int) -> dict:
    """accuracy, loss_first, loss_final, train_s and test_examples of one training run."""
    torch.manual_seed(seed)
    entry = attention_zoo.get(impl)
    attentions = [entry.build(problem, **hparams) for _ in range(task["layers"])]
    model = RecallModel(attentions, task["vocab_size"], problem.q_len, problem.q_heads, problem.head_dim)
    model = model.to(device=problem.device, dtype=problem.torch_dtype)
    trained = [p for p in model.parameters() if p.requires_grad]  # an entry's own frozen tensors stay as built
    optimizer = torch.optim.AdamW(trained, lr=task["learning_rate"], weight_decay=task["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=task["learning_rate"], total_steps=task["steps"], pct_start=WARMUP_FRACTION
    )
    losses = []
    started = time.perf_counter()
    for step in range(task["steps"]):
        inputs, labels = _batch(problem, task, seed * task["steps"] + step)
        logits = model(inputs).flatten(0, 1).float()
        loss = torch.nn.functional.cross_entropy(logits, labels.flatten(), ignore_index=IGNORE_INDEX)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the MQAR training loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - started

    model.eval()
    correct = asked = 0
    test_batches = math.ceil(task["test_examples"] / problem.batch)  # the entry is built for `batch` sequences
    with torch.no_grad():
        for index in range(test_batches):
            inputs, labels = _batch(problem, task, TEST_SEED_OFFSET + seed * test_batches + index)
            asked_here = labels != IGNORE_INDEX
            correct += int((model(inputs).argmax(-1) == labels)[asked_here].sum())
            asked += int(asked_here.sum())
    return {
        "accuracy": correct / asked,
        "loss_first": losses[0],
        "loss_final": sum(losses[-FINAL_STEPS:]) / len(losses[-FINAL_STEPS:]),
        "train_s": train_s,
        "test_examples": test_batches * problem.batch,
    }
