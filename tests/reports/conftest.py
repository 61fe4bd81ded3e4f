"""Report tests run torch on one thread: the tiny models here are faster that way, and two
OpenMP threads on a busy two-core machine spin against each other (measured: 100x slower)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
