"""Experiments are compositions: each names its task, algorithm, protocol (``conf/protocol/``: the paper's settings)
and K, or extends another experiment; anything two experiments share lives in a protocol or in the experiment they
extend, never in a copied block. (That each still composes as before is ``test_composition.py``'s job.)"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
from conftest import compose
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).parents[1] / "conf"
EXPERIMENTS = {p.stem: p for p in sorted((CONF / "experiment").glob("*.yaml"))}
LINE_BUDGET = 400  # all of conf/experiment/; it was 950 lines when every experiment carried its own settings
MAX_SETTINGS = 10  # values one experiment sets besides its defaults list
GROUPS = ("algorithm", "env", "protocol")  # what an experiment's defaults list may choose
TASK_AND_K = {"env.scenario", "env.agent_conf", "env.map_name", "kpg.k"}  # may repeat across experiments


def settings(path: Path) -> dict[str, object]:
    """The values a yaml sets, by dotted key (lists are values), without its defaults list."""
    cfg = OmegaConf.load(path)
    cfg.pop("defaults", None)

    def flat(node: DictConfig, prefix: str) -> dict[str, object]:
        out = {}
        for key, value in node.items():
            if isinstance(value, DictConfig) and len(value):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        return out

    return flat(cfg, "")


def defaults(path: Path) -> list:
    return list(OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []))


def protocol_of(name: str) -> str | None:
    """The protocol an experiment selects, or inherits from the experiment it extends."""
    entries = defaults(EXPERIMENTS[name])
    chosen = [e["override /protocol"] for e in entries if isinstance(e, dict) and "override /protocol" in e]
    if chosen:
        return chosen[0]
    extended = [e for e in entries if isinstance(e, str) and e != "_self_"]
    return protocol_of(extended[0]) if extended else None


def protocol_settings(name: str) -> dict[str, object]:
    """A protocol's values, those of the protocols it builds on included (later ones win)."""
    path = CONF / "protocol" / f"{name}.yaml"
    base = [protocol_settings(e) for e in defaults(path) if e != "_self_"]
    return {k: v for layer in [*base, settings(path)] for k, v in layer.items()}


def test_experiments_fit_the_line_budget():
    lines = sum(len(p.read_text().splitlines()) for p in EXPERIMENTS.values())
    assert lines <= LINE_BUDGET, f"conf/experiment/ is {lines} lines: move shared settings to conf/protocol/"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_names_only_its_parts(name):
    """Defaults: group choices (algorithm, env, protocol) or the one experiment it extends; then a few values."""
    path = EXPERIMENTS[name]
    assert path.read_text().startswith("# @package _global_\n")
    entries = defaults(path)
    extended = [e for e in entries if isinstance(e, str) and e != "_self_"]
    assert len(extended) <= 1 and all(e in EXPERIMENTS for e in extended), entries
    for entry in (e for e in entries if isinstance(e, dict)):
        ((key, option),) = entry.items()
        group = key.removeprefix("override /")
        assert group in GROUPS and (CONF / group / f"{option}.yaml").exists(), entry
    names_algorithm = any(isinstance(e, dict) and "override /algorithm" in e for e in entries)
    assert extended or names_algorithm, f"{name} names no algorithm and extends no experiment"
    assert len(settings(path)) <= MAX_SETTINGS, f"{name} sets {sorted(settings(path))}: a protocol's job"


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if protocol_of(n)])
def test_experiment_does_not_restate_its_protocol(name):
    protocol = protocol_settings(protocol_of(name))
    restated = {k: v for k, v in settings(EXPERIMENTS[name]).items() if k in protocol and protocol[k] == v}
    assert not restated, f"{name} restates its protocol {protocol_of(name)}: {restated}"


def test_no_setting_is_copied_between_experiments():
    """Besides task and K, a value two experiments set belongs in a protocol, or one extends the other."""
    sets = {n: {(k, repr(v)) for k, v in settings(p).items() if k not in TASK_AND_K} for n, p in EXPERIMENTS.items()}
    copied = {(a, b): sorted(sets[a] & sets[b]) for a, b in combinations(sets, 2) if sets[a] & sets[b]}
    assert not copied, copied


def test_protocol_from_the_command_line_is_the_experiment():
    """An experiment is its parts: the same run from group choices on the command line."""
    by_parts = compose(["algorithm=mappo", "env=smax", "protocol=smax_onpolicy", "env.map_name=3m", "kpg.k=2"])
    assert by_parts == compose(["+experiment=k2_mappo_smax_3m"])
