"""What ``lightning.pytorch.Trainer`` accepts, read from its signature: argument names, their annotations, and the
accelerator and device values Lightning can use on this machine.

A leaf: every check returns what is allowed (a phrase for the one-line error) when a value is refused, else None;
:mod:`kpg_lightning.configure` raises the errors.
"""

from __future__ import annotations

import collections.abc
import datetime
import difflib
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = [
    "MANUAL_OPTIMIZATION",
    "RANGES",
    "VALUE_CHECKED",
    "accelerator_problem",
    "describe",
    "devices_problem",
    "hints",
    "key_problem",
    "matches",
    "resolve_accelerator",
]

BUILT_ELSEWHERE = {"logger": "the logger group (logger.csv, logger.tensorboard)", "callbacks": "the callbacks group"}
"""Trainer arguments this project builds from other config groups."""

VALUE_CHECKED = {"accelerator", "devices", "precision", "strategy"}
"""Arguments whose values are checked against what Lightning (and this project) accepts, not only their type."""

MANUAL_OPTIMIZATION: dict[str, tuple[Callable[[Any], bool], str]] = {
    "gradient_clip_val": (
        lambda v: v is None,
        "null: the module steps its own optimizers (manual optimization); clip with algorithm.grad_clip",
    ),
    "accumulate_grad_batches": (lambda v: v in (None, 1), "1: the module steps its own optimizers"),
}
"""Arguments Lightning refuses (at ``fit``) for a module with manual optimization, as this one is."""


def _at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: v is None or not isinstance(v, int) or v >= low


RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_nodes": (_at_least(1), "an integer >= 1"),
    "max_epochs": (_at_least(-1), "an integer >= -1 (-1: no limit) or null"),
    "max_steps": (_at_least(-1), "an integer >= -1 (-1: no limit)"),
    "min_epochs": (_at_least(0), "an integer >= 0 or null"),
    "min_steps": (_at_least(0), "an integer >= 0 or null"),
    "log_every_n_steps": (_at_least(1), "an integer >= 1 or null"),
    "max_time": (
        lambda v: not isinstance(v, str) or re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v) is not None,
        "DD:HH:MM:SS (e.g. 00:12:00:00), a mapping such as {hours: 12}, or null",
    ),
}
"""Numeric and format limits Lightning enforces later (some only once training runs)."""


@functools.cache
def hints() -> dict[str, Any]:
    """``Trainer.__init__``'s arguments and their annotations (``self`` and the return left out)."""
    from lightning.pytorch import Trainer

    names = [n for n in inspect.signature(Trainer.__init__).parameters if n != "self"]
    annotations = typing.get_type_hints(Trainer.__init__)
    return {name: annotations.get(name, Any) for name in names}


def key_problem(name: str) -> str | None:
    """What is allowed instead of ``trainer.<name>`` when it is not an argument this project passes on, else None."""
    if name in BUILT_ELSEWHERE:
        return f"set by {BUILT_ELSEWHERE[name]}"
    if name in hints():
        return None
    close = difflib.get_close_matches(name, list(hints()), n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else "; see --help"
    return f"not a lightning.pytorch.Trainer argument{hint}"


def matches(value: Any, hint: Any) -> bool:
    """Whether a config value (plain Python, as ``OmegaConf.to_container`` gives it) fits an annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, collections.abc.Iterable):
        return isinstance(value, list) and all(matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and all(matches(v, args[1]) for v in value.values())
    return False  # objects (an Accelerator, a Profiler, ...): not expressible on the command line


def describe(hint: Any) -> str:
    """An annotation in words: ``Optional[int]`` → ``an integer or null``."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args if describe(a)]
        return ", ".join(parts[:-1]) + f" or {parts[-1]}" if len(parts) > 1 else "".join(parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, collections.abc.Iterable):
        return f"a list ({describe(args[0])} each)" if args else "a list"
    if origin is dict:
        return "a mapping"
    if hint is datetime.timedelta:
        return ""
    return names.get(hint, "")


def _available(name: str) -> bool:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return name in AcceleratorRegistry and AcceleratorRegistry[name]["accelerator"].is_available()


def resolve_accelerator(value: str) -> str:
    """The accelerator Lightning picks for ``value`` (auto and gpu resolved on this machine)."""
    if value in ("auto", "gpu"):
        for name in ("cuda", "mps") if value == "gpu" else ("cuda", "mps", "cpu"):
            if _available(name):
                return name
    return value


def accelerator_problem(value: Any) -> str | None:
    """What is allowed when ``trainer.accelerator`` names an accelerator Lightning lacks or this machine cannot run."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = sorted(AcceleratorRegistry.available_accelerators())
    usable = [n for n in names if _available(n)]
    if not isinstance(value, str) or value not in ("auto", "gpu", *names):
        return f"auto, gpu or one of {', '.join(names)}"
    if value == "auto" or _available(resolve_accelerator(value)):
        return None
    if value in ("gpu", "cuda") and "cpu" in usable:
        return "cpu or auto on a machine without a CUDA GPU"
    return f"one this machine can run: auto, {', '.join(usable)} ({value} is not available here)"


def devices_problem(devices: Any, accelerator: str) -> str | None:
    """What is allowed when Lightning's own parser for ``accelerator`` (resolved) refuses ``trainer.devices``."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    if devices == "auto":
        return None
    cls = AcceleratorRegistry[accelerator]["accelerator"]
    if accelerator == "cpu":
        allowed = "auto or a number of processes >= 1 on the CPU"
    else:
        count = cls.auto_device_count() if cls.is_available() else 0
        allowed = f"auto, -1 (all), a count up to {count} or a list of {accelerator} device indices below {count}"
    if devices in ([], 0, "0") or not matches(devices, hints()["devices"]):
        return allowed
    try:
        cls.parse_devices(devices)
    except Exception:  # Lightning's parsers raise TypeError, ValueError or MisconfigurationException
        return allowed
    return None
