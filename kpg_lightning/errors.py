"""The project's error types, raised in one layer and caught in another: a leaf that imports nothing of the project.

Every message is one line naming the offending key, loss or checkpoint.
"""

from __future__ import annotations

__all__ = ["EXIT_PREEMPTED", "CheckpointError", "ConfigError", "NonFiniteError", "Preempted"]


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key."""


class NonFiniteError(FloatingPointError):
    """A loss or gradient that is NaN or infinite; raised before the optimizer step (or, in training, the step's
    updates rolled back), so parameters stay finite."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which and why."""


EXIT_PREEMPTED = 75
"""Exit status of a run stopped by SIGTERM/SIGUSR1 after checkpointing: ``EX_TEMPFAIL`` of ``sysexits.h`` (a
temporary failure; retrying is expected to succeed), distinct from success (0), bad configuration (2) and a
non-finite loss (3), so that a scheduler or job script can requeue it with ``resume=<run dir>``."""


class Preempted(RuntimeError):
    """The run was stopped by a signal after checkpointing its current frame count; the message says where."""
