"""The command line of ``python -m kpg_lightning.train`` (and ``kpg-train``): Hydra overrides and Lightning-style
flags, ``--help``, checks before anything starts, and one line per error.

``key=value`` (Hydra) and ``--key=value`` / ``--key value`` (Lightning CLI style) mean the same and mix freely;
Hydra's own flags (``-m``, ``--cfg``, ``--info``, ...) keep their meaning. Bad input ends as one line on stderr,
``error: <key>=<value> is not allowed: <what is allowed>``, and exit code 2; a non-finite loss as exit code 3.
The entry point module passes its task (one run in Hydra's output directory) to :func:`main`.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kpg_lightning.configure import check_simulator, check_trainer_key, register_configs, validate
from kpg_lightning.envs.smac import SmacUnavailableError
from kpg_lightning.errors import EXIT_PREEMPTED, ConfigError, NonFiniteError, Preempted

__all__ = ["RENAMED_KEYS", "check", "exit_code", "main", "precheck", "to_overrides"]

Task = Callable[[DictConfig], Any]

RENAMED_KEYS = {
    "algorithm.epsilon_frames": "algorithm.epsilon_anneal_frames",
    "algorithm.hypernet_hidden": "algorithm.mixer_hypernet_hidden",
}
"""Settings that changed name (old → new): an override of the old one is refused with one line naming the new."""

HELP_FLAGS = ("-h", "--help")


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def exit_code(action: Callable[[], object]) -> int:
    """Run ``action``; an error the user can act on ends as one line on stderr and its exit code (0: none)."""
    try:
        action()
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except SmacUnavailableError as exc:  # the game or oxwhirl's package missing, found when the env is made
        return _fail(f"env=smac is not allowed here: {exc}", 2)
    except NonFiniteError as exc:
        return _fail(str(exc), 3)
    except Preempted as exc:  # a checkpoint at the frame count reached: a scheduler should requeue, not finish
        if _global_rank() == 0:  # every data-parallel rank stops at the same checkpoint; one line says so
            print(f"preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


def _global_rank() -> int:
    """This process's data-parallel rank as Lightning set it (0 outside data parallelism)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


@functools.cache
def _hydra_flags() -> dict[str, Any]:
    """Hydra's own options (``-m``, ``--cfg``, ...) → their argparse action, from Hydra's parser."""
    from hydra._internal.utils import get_args_parser

    return {s: a for a in get_args_parser()._actions for s in a.option_strings if s not in HELP_FLAGS}


def _is_number(token: str) -> bool:
    return re.fullmatch(r"-?(\d+\.?\d*|\.\d+)(e-?\d+)?", token, re.IGNORECASE) is not None


def to_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a command line into Hydra's flags (with their values) and Hydra overrides, turning each
    ``--key=value`` / ``--key value`` into ``key=value``."""
    flags, overrides, tokens = [], [], list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        action = _hydra_flags().get(name)
        if token in HELP_FLAGS:
            flags.append(token)
        elif action is not None:
            flags.append(token)
            if action.nargs != 0 and not eq:  # a value in the next token (optional for --info)
                if i + 1 < len(tokens) and (action.nargs != "?" or tokens[i + 1] in (action.choices or ())):
                    value = tokens[i + 1]
                    flags.append(value)
                    i += 1
                elif action.nargs != "?":
                    raise ConfigError(f"{name} is not allowed without a value: {action.help}")
            if action.choices and (eq or action.nargs not in (0, "?") or value) and value not in action.choices:
                raise ConfigError(f"{name} {value!r} is not allowed: one of {', '.join(action.choices)}")
        elif token.startswith("--") and len(token) > 2:
            key = name[2:]
            if not re.fullmatch(r"[+~]{0,2}[\w./@:-]+", key):
                raise ConfigError(f"{token} is not allowed: an option --key=value or --key value (see --help)")
            if not eq and i + 1 < len(tokens) and (not tokens[i + 1].startswith("-") or _is_number(tokens[i + 1])):
                eq, value = "=", tokens[i + 1]
                i += 1
            if not eq and not key.startswith("~"):
                raise ConfigError(f"--{key} is not allowed without a value: --{key}=VALUE or --{key} VALUE")
            overrides.append(f"{key}{eq}{value}")
        elif token.startswith("-") and not _is_number(token):
            raise ConfigError(f"{token} is not allowed: not an option (key=value, --key=value or a Hydra flag)")
        else:
            overrides.append(token)
        i += 1
    return flags, overrides


def _one_line(exc: BaseException) -> str:
    """Hydra's composition errors, flattened to one line (key, problem, valid options)."""
    parts: list[str] = []
    options: list[str] = []
    while exc is not None:
        lines = iter(str(exc).splitlines())
        for line in lines:
            line = line.strip()
            if line.startswith(("Config search path", "provider=", "full_key", "object_type", "reference_type")):
                break
            if line.startswith("Available options"):
                options = []
                for option in (o.strip() for o in lines):
                    if not option or option.startswith("Config search path"):
                        break
                    if not option.endswith("_config"):
                        options.append(option)
                parts.append(f"{line} {', '.join(options)}")
            elif line and line not in parts:
                parts.append(line.rstrip("."))
        exc = exc.__cause__
    return "; ".join(parts)


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _renamed_key(overrides: list[str]) -> str | None:
    for override in overrides:
        key = _key(override)
        if key in RENAMED_KEYS:
            return f"{key} is not allowed: renamed to {RENAMED_KEYS[key]}"
    return None


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module("kpg_lightning.conf", version_base=None):
        cfg = compose("config", overrides=overrides)
    OmegaConf.to_container(cfg, resolve=False)  # type errors in nested values surface here
    return cfg


def _closest_keys(overrides: list[str]) -> str:
    """``; closest: ...`` for the first dotted override key the config (with the same group choices) lacks."""
    import difflib

    try:
        cfg = _compose([o for o in overrides if "." not in _key(o)])
    except Exception:
        return ""
    keys = [k for k, _ in _flatten(OmegaConf.to_container(cfg, resolve=False))]
    for override in overrides:
        key = _key(override)
        if "." in key and key not in keys:
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
            return f"; closest: {', '.join(close)}" if close else ""
    return ""


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(node, dict):
        return [(prefix, node)]
    items = []
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        items += _flatten(value, path) if isinstance(value, dict) and value else [(path, value)]
    return items


def _composed(overrides: list[str]) -> DictConfig:
    """The config for ``overrides``; :class:`ConfigError` with one line if it cannot be composed (or, before
    composing, a renamed setting spelled the old way or a ``trainer.*`` key that is no Trainer argument)."""
    renamed = _renamed_key(overrides)
    if renamed:
        raise ConfigError(renamed)
    for override in overrides:
        if _key(override).startswith("trainer."):
            check_trainer_key(_key(override))
    try:
        return _compose(overrides)
    except Exception as exc:
        raise ConfigError(_one_line(exc) + _closest_keys(overrides)) from exc


def precheck(overrides: list[str]) -> str | None:
    """The one-line error if the command line's overrides do not compose, else None."""
    try:
        _composed(overrides)
    except ConfigError as exc:
        return str(exc)
    return None


def check(overrides: list[str]) -> DictConfig:
    """Everything that can be checked before a run starts: composition, values, Trainer arguments, simulators.
    Raises :class:`ConfigError` with one line."""
    cfg = _composed(overrides)
    validate(cfg)
    check_simulator(cfg)
    return cfg


def _show(value: Any) -> str:
    """A value as an override writes it: null, true, [256,256]."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def help_text(overrides: list[str]) -> str:
    """``--help``: how to override, the config groups and their options, every key with its default."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    try:
        cfg = _compose(overrides)
    except Exception:
        cfg = _compose([])
    register_configs()
    with initialize_config_module("kpg_lightning.conf", version_base=None):
        loader = GlobalHydra.instance().config_loader()
        groups = {
            g: [o for o in loader.get_group_options(g) if not o.endswith("_config") and o != "base_config"]
            for g in sorted(loader.list_groups(""))
            if g != "hydra"
        }
    wrap = functools.partial(textwrap.fill, width=118, initial_indent="  ", subsequent_indent="      ")
    lines = [
        "usage: python -m kpg_lightning.train [key=value | --key=value | --key value ...] [Hydra flags]",
        "",
        "Trains K-level policy gradients (default: K2-MADDPG on VMAS balance, CPU). Every key below can be set",
        "as key=value (Hydra) or --key=value / --key value (Lightning CLI), mixed freely, e.g.",
        "  python -m kpg_lightning.train +experiment=k2_facmac_walker --trainer.devices=2 --kpg.k 3",
        "A group takes one option (group=option; experiment: +experiment=name).",
        "",
        "Groups and their options:",
        *(wrap(f"{group}: {', '.join(options) or '-'}") for group, options in groups.items()),
        "",
        "Keys and their current values (with the groups chosen above; add overrides to --help to see others):",
    ]
    container = OmegaConf.to_container(cfg, resolve=False)
    roots = [f"{k}={_show(v)}" for k, v in container.items() if not isinstance(v, dict)]
    lines.append(wrap(" ".join(roots)))
    for name, node in container.items():
        if isinstance(node, dict):
            pairs = [f"{k}={_show(v)}" for k, v in _flatten(node)] if node else ["(none)"]
            lines.append(wrap(f"{name}: {' '.join(pairs)}"))
    lines += [
        "  (trainer: every lightning.pytorch.Trainer argument but logger and callbacks)",
        "",
        "Hydra flags: -m/--multirun (sweeps, e.g. -m seed=0,1,2), --cfg job|hydra|all, --info, -c, --hydra-help.",
        "Bad input stops the run before anything starts, with one line on stderr and exit code 2:",
        "  error: kpg.k=0 is not allowed: an integer >= 1 (1 is the base algorithm)",
    ]
    return "\n".join(lines)


def _launch(task: Task, args: list[str]) -> int:
    """Hand ``args`` to ``@hydra.main`` running ``task`` (its errors reported by :func:`exit_code`)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    @functools.wraps(task)  # Hydra names the job (and its log) after the task's module: train
    def guarded(cfg: DictConfig) -> None:
        code = exit_code(lambda: task(cfg))
        if code:
            sys.exit(code)

    app = hydra.main(version_base=None, config_path="pkg://kpg_lightning.conf", config_name="config")(guarded)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "kpg-train", *args]
    try:
        app()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return 0


def main(argv: Sequence[str] | None = None, task: Task | None = None) -> int:
    """The command line: ``argv`` (default ``sys.argv[1:]``) → exit code. Without ``task`` only the checks run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed: list[list[str]] = []
    code = exit_code(lambda: parsed.append([*to_overrides(argv)]))
    if code:
        return code
    flags, overrides = parsed[0]
    if any(flag in HELP_FLAGS for flag in flags):
        print(help_text([o for o in overrides if precheck([o]) is None]))
        return 0
    if not any(flag not in ("-r", "--run") for flag in flags):  # a plain run (not -m, --cfg, --info, -cn, ...)
        code = exit_code(lambda: check(overrides))
        if code or task is None:
            return code
    return _launch(task, [*flags, *overrides]) if task is not None else 0
