"""kpg_lightning: K-Level Policy Gradients (KPG) for cooperative multi-agent RL on TorchRL + Lightning + Hydra."""

from kpg_lightning.kpg import KLevelStats, k_level_step

__all__ = ["KLevelStats", "k_level_step"]
__version__ = "0.1.0"
