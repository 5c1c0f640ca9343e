"""Lightning callbacks, installed as ``kpg_lightning.callbacks`` (``kpg_lightning/callbacks`` links here)."""

from kpg_lightning.callbacks.checkpoint import FrameCheckpoint, sigusr1_as_sigterm
from kpg_lightning.callbacks.evaluation import EvaluationCallback, episode_outcomes, policy_state
from kpg_lightning.callbacks.k_cost import KCostCallback
from kpg_lightning.callbacks.kpg_diagnostics import KPGDiagnostics, mean_level_stats
from kpg_lightning.callbacks.progress import FramesProgressBar, quiet_known_noise

__all__ = [
    "EvaluationCallback",
    "FrameCheckpoint",
    "FramesProgressBar",
    "KCostCallback",
    "KPGDiagnostics",
    "episode_outcomes",
    "mean_level_stats",
    "policy_state",
    "quiet_known_noise",
    "sigusr1_as_sigterm",
]
