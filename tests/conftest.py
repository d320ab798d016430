"""Shared test settings: a fixed thread count so CPU kernels behave the same on every run.

Under pytest-xdist (README's test command runs the untimed tests in two processes) each worker takes
one thread, so that the two do not oversubscribe the cores.
"""

import os

import torch

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
