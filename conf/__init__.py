"""Hydra configuration tree, shipped with the package as ``kpg_lightning.conf`` (``pkg://kpg_lightning.conf``)."""
