"""Shared test settings: a fixed thread count so CPU kernels behave the same on every run."""

import torch

torch.set_num_threads(2)
