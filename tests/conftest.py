"""Suite-wide test settings.

pytest-xdist runs the suite on both cores (``-n 2`` in pyproject), so each worker gets one torch
thread: two workers with two OpenMP threads each oversubscribe a 2-core machine many times over.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

# Shared fixtures: the evaluation tests' TORCH_HOME with stand-in Inception weights (module-scoped)
# and a test setting it; the sampling tests' tiny RCDM, its checkpoint and a store with images.
from tests.evaluation_setup import torch_home, use_torch_home  # noqa: E402, F401
from tests.sample_setup import ckpt, model, store_dir  # noqa: E402, F401
