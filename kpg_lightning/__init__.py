"""kpg_lightning: K-Level Policy Gradients (KPG) for cooperative multi-agent RL on TorchRL + Lightning + Hydra."""

import os

# Idle OpenMP threads sleep instead of spinning (read once, when torch loads OpenMP, so before any torch import;
# the package imports torch before ``kpg_lightning.train`` runs). Spinning threads fight JAX's (SMAX) and any
# other process for the cores: 3-4x slower runs on 2 cores. Set OMP_WAIT_POLICY=ACTIVE to opt out.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kpg_lightning.kpg import KLevelStats, k_level_step

__all__ = ["KLevelStats", "k_level_step"]
__version__ = "0.1.0"
