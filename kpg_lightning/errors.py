"""The project's error types, raised in one layer and caught in another: a leaf that imports nothing of the project.

Every message is one line naming the offending key, loss or checkpoint.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "NonFiniteError"]


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key."""


class NonFiniteError(FloatingPointError):
    """A loss or gradient that is NaN or infinite; raised before the optimizer step (or, in training, the step's
    updates rolled back), so parameters stay finite."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which and why."""
