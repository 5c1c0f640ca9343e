"""Algorithm registry: name → (class, config dataclass). K is not an algorithm: ``kpg.k`` applies to all."""

from kpg_lightning.algorithms.base import Algorithm, AlgorithmConfig
from kpg_lightning.algorithms.maddpg import Maddpg, MaddpgConfig

ALGORITHMS: dict[str, tuple[type[Algorithm], type[AlgorithmConfig]]] = {
    "maddpg": (Maddpg, MaddpgConfig),
}

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig"]
