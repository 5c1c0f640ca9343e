"""Algorithm registry: name → (class, config dataclass). K is not an algorithm: ``kpg.k`` applies to all."""

from kpg_lightning.algorithms.base import Algorithm, AlgorithmConfig
from kpg_lightning.algorithms.facmac import Facmac, FacmacConfig
from kpg_lightning.algorithms.maddpg import Maddpg, MaddpgConfig
from kpg_lightning.algorithms.mappo import IppoConfig, Mappo, MappoConfig

ALGORITHMS: dict[str, tuple[type[Algorithm], type[AlgorithmConfig]]] = {
    "maddpg": (Maddpg, MaddpgConfig),
    "mappo": (Mappo, MappoConfig),
    "ippo": (Mappo, IppoConfig),
    "facmac": (Facmac, FacmacConfig),
}

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig"]
