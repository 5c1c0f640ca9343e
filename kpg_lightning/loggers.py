"""Logger factories for the ``logger`` group's options where Lightning's class alone does not suffice."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger

__all__ = ["mlflow_logger"]


def mlflow_logger(**kwargs: Any) -> MLFlowLogger:
    """Lightning's :class:`MLFlowLogger` with ``kwargs``. MLflow 3 refuses a ``file:`` tracking store (in
    maintenance, though complete) unless ``MLFLOW_ALLOW_FILE_STORE`` is true: a local store under the run directory
    is what ``logger=mlflow`` asks for, so that is set here unless the environment already says otherwise."""
    if str(kwargs.get("tracking_uri") or "file:").startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(**kwargs)
