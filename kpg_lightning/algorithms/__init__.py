"""Algorithm registry: name → (class, config dataclass), and the discrete variant of each class that has one. K is not
an algorithm: ``kpg.k`` applies to all."""

from kpg_lightning.algorithms.base import Algorithm, AlgorithmConfig
from kpg_lightning.algorithms.comix import Comix, ComixConfig
from kpg_lightning.algorithms.facmac import DiscreteFacmac, Facmac, FacmacConfig
from kpg_lightning.algorithms.maddpg import DiscreteMaddpg, Maddpg, MaddpgConfig
from kpg_lightning.algorithms.mappo import IppoConfig, Mappo, MappoConfig
from kpg_lightning.algorithms.pola import Pola, PolaConfig
from kpg_lightning.algorithms.qmix import IqlConfig, Qmix, QmixConfig, VdnConfig
from kpg_lightning.config import ModelConfig
from kpg_lightning.envs.info import EnvInfo

ALGORITHMS: dict[str, tuple[type[Algorithm], type[AlgorithmConfig]]] = {
    "maddpg": (Maddpg, MaddpgConfig),
    "mappo": (Mappo, MappoConfig),
    "ippo": (Mappo, IppoConfig),
    "pola": (Pola, PolaConfig),
    "facmac": (Facmac, FacmacConfig),
    "qmix": (Qmix, QmixConfig),
    "vdn": (Qmix, VdnConfig),
    "iql": (Qmix, IqlConfig),
    "comix": (Comix, ComixConfig),
}

DISCRETE_VARIANTS: dict[type[Algorithm], type[Algorithm]] = {
    Facmac: DiscreteFacmac,
    Maddpg: DiscreteMaddpg,
}
"""The class built instead on discrete action spaces (Gumbel-softmax actors, ε-greedy acting, GRU actors); a class
not listed acts in the action spaces it names in ``action_spaces`` itself."""


def make_algorithm(cfg: AlgorithmConfig, info: EnvInfo, model: ModelConfig) -> Algorithm:
    """The algorithm ``cfg.name`` for ``info``'s action space: its discrete variant where actions are discrete."""
    cls = ALGORITHMS[cfg.name][0]
    if info.discrete:
        cls = DISCRETE_VARIANTS.get(cls, cls)
    return cls(cfg, info, model)


__all__ = ["ALGORITHMS", "DISCRETE_VARIANTS", "Algorithm", "AlgorithmConfig", "make_algorithm"]
