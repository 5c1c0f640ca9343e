"""Algorithm registry: name → (class, config dataclass). K is not an algorithm: ``kpg.k`` applies to all."""

from kpg_lightning.algorithms.base import Algorithm, AlgorithmConfig
from kpg_lightning.algorithms.comix import Comix, ComixConfig
from kpg_lightning.algorithms.facmac import Facmac, FacmacConfig
from kpg_lightning.algorithms.maddpg import Maddpg, MaddpgConfig
from kpg_lightning.algorithms.mappo import IppoConfig, Mappo, MappoConfig
from kpg_lightning.algorithms.qmix import IqlConfig, Qmix, QmixConfig, VdnConfig

ALGORITHMS: dict[str, tuple[type[Algorithm], type[AlgorithmConfig]]] = {
    "maddpg": (Maddpg, MaddpgConfig),
    "mappo": (Mappo, MappoConfig),
    "ippo": (Mappo, IppoConfig),
    "facmac": (Facmac, FacmacConfig),
    "qmix": (Qmix, QmixConfig),
    "vdn": (Qmix, VdnConfig),
    "iql": (Qmix, IqlConfig),
    "comix": (Comix, ComixConfig),
}

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig"]
