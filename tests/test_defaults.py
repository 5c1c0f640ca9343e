"""Every default is written once, in its schema dataclass: the yamls under ``conf/`` select group options and explain
them, and hold no value a schema also holds (equal values today are different values tomorrow). Programmatic users
(``MaddpgConfig()``, ``BufferConfig()``, ...) therefore get what the command line composes.

The group → schema mapping is discovered, not listed: a group option's schema is the ConfigStore entry its
``defaults`` list names (``algorithm``, ``env``), else the type of the root ``Config``'s field of that name. So a new
algorithm, environment family or group is checked as soon as it is registered. Experiments and protocols are
patches with deliberate deviations and are not checked here; ``hydra/`` is Hydra's own configuration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import compose
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from kpg_lightning.algorithms import ALGORITHMS
from kpg_lightning.config import Config, TrainerConfig
from kpg_lightning.configure import register_configs
from kpg_lightning.envs.registry import ENV_FAMILIES

CONF = Path(__file__).parents[1] / "conf"
NOT_GROUPS = {"experiment", "hydra", "protocol"}
OPTIONS = sorted(
    path.relative_to(CONF).as_posix() for path in CONF.glob("*/*.yaml") if path.parent.name not in NOT_GROUPS
)


def schema_of(option: str) -> type | None:
    """The dataclass that holds the defaults of group option ``option`` (``group/name.yaml``); None for a group
    without a schema (a dict such as ``logger``, whose yaml is its one home)."""
    register_configs()
    group = option.split("/")[0]
    raw = OmegaConf.load(CONF / option)
    store = ConfigStore.instance()
    stored = set(store.list(group)) if group in store.repo else set()
    for entry in raw.get("defaults", []):
        if isinstance(entry, str) and f"{entry}.yaml" in stored:
            return OmegaConf.get_type(store.load(f"{group}/{entry}.yaml").node)
    root = OmegaConf.structured(Config)
    assert group in root, f"conf/{option}: the group {group!r} is no field of Config"
    kind = OmegaConf.get_type(root, group)
    if dataclasses.is_dataclass(kind):
        return kind
    assert kind is dict, (
        f"conf/{option}: Config.{group} has no schema and the yaml's defaults list names none "
        f"in the ConfigStore (add `defaults: [<name>_config, _self_]`)"
    )
    return None


def written_twice(path: Path, schema: type) -> list[str]:
    raw = OmegaConf.load(path)
    fields = {f.name for f in dataclasses.fields(schema)}
    return sorted(key for key in raw if key != "defaults" and key in fields)


@pytest.mark.parametrize("option", OPTIONS)
def test_group_option_yaml_holds_no_default_of_its_schema(option):
    schema = schema_of(option)
    if schema is None:
        pytest.skip(f"conf/{option}: a group without a schema; its yaml is the one home of its values")
    keys = written_twice(CONF / option, schema)
    assert not keys, (
        f"conf/{option} writes {', '.join(keys)}, which {schema.__name__} already holds: keep the "
        f"value (and its explanation) in the dataclass only"
    )


def test_root_yaml_holds_no_default_of_config():
    keys = written_twice(CONF / "config.yaml", Config)
    assert not keys, (
        f"conf/config.yaml writes {', '.join(keys)}, which Config already holds: keep the values in the dataclass only"
    )


def test_every_registered_schema_has_its_group_option():
    """Each algorithm and environment family registered in the ConfigStore is selectable by a yaml naming it."""
    register_configs()
    store = ConfigStore.instance()
    for group in ("algorithm", "env"):
        for entry in store.list(group):
            name = entry.removesuffix("_config.yaml")
            path = CONF / group / f"{name}.yaml"
            assert path.is_file(), f"{group}/{entry} is registered but conf/{group}/{name}.yaml is missing"
            assert entry.removesuffix(".yaml") in OmegaConf.load(path).get("defaults", []), (
                f"conf/{group}/{name}.yaml does not compose over {entry.removesuffix('.yaml')}"
            )


# -- dataclass-built configs are the composed ones ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_algorithm_dataclass_is_the_composed_config(name):
    cfg = compose([f"algorithm={name}"])
    assert OmegaConf.to_object(cfg.algorithm) == ALGORITHMS[name][1]()


@pytest.mark.parametrize("name", sorted(ENV_FAMILIES))
def test_env_dataclass_is_the_composed_config(name):
    cfg = compose([f"env={name}"])
    assert OmegaConf.to_object(cfg.env) == ENV_FAMILIES[name].config_class()


ROOT = OmegaConf.structured(Config)
ROOT_GROUPS = sorted(key for key in ROOT if dataclasses.is_dataclass(OmegaConf.get_type(ROOT, key)))


@pytest.mark.parametrize("group", ROOT_GROUPS)
def test_root_group_dataclass_is_the_composed_config(group):
    node = compose()[group]
    schema = OmegaConf.get_type(ROOT, group)
    if schema is TrainerConfig:  # default_root_dir interpolates the Hydra run directory: compare unresolved
        assert OmegaConf.to_container(node, resolve=False) == dataclasses.asdict(TrainerConfig())
    else:
        assert OmegaConf.to_object(node) == schema()


def test_root_values_are_the_dataclass_defaults():
    cfg, plain = compose(), Config()
    for key in ROOT:
        if not OmegaConf.is_missing(ROOT, key) and not isinstance(ROOT[key], DictConfig):
            assert cfg[key] == getattr(plain, key), key
