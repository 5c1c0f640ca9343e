"""Structured configuration: dataclasses in Hydra's ConfigStore, so overrides are type-checked at start.

Group schemas: ``kpg``, ``collector``, ``buffer``, ``eval``, ``checkpoint``, ``progress``, ``model`` here; each
algorithm's and each environment family's config lives beside its code. :mod:`kpg_lightning.configure` registers them
all and validates a composed config against the registries; this module is a leaf of schemas only. The
``trainer`` group mirrors every argument of Lightning's ``Trainer`` (generated from its signature), so any of them
can be overridden as ``trainer.<arg>=...``. Sizes derived from the environment are never written back here.

Every default lives in its schema dataclass, written once; the yamls under ``conf/`` select group options, explain
them and hold no values (experiments excepted: they are patches with deliberate deviations).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

__all__ = ["Config", "KPGConfig", "ModelConfig", "ProgressConfig", "is_int", "is_number"]


def is_int(value: Any) -> bool:
    """An integer setting (``True``/``False`` are not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real-number setting (``True``/``False`` are not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


ACTOR_OPTIMIZERS = ("auto", "rmsprop", "adam", "sgd")
KPG_SCOPES = ("update", "step")
COMPILE_MODES = ("none", "default", "cudagraphs")


@dataclass
class ModelConfig:
    """Network architecture: MLPs, by default shared by all agents with agent ids (the MaMuJoCo experiments set
    Appendix E.2's 400-300 ReLU)."""

    actor_hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layer sizes of the actor."""
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layer sizes of the critic."""
    activation: str = "relu"
    """Hidden activation: relu, tanh, elu or gelu."""
    share_params: bool = True
    """One actor for all agents with an agent-id one-hot input (True) or one actor per agent (False)."""
    recurrent: bool = False
    """GRU actors (:class:`AgentGRU`): hidden state carried through collection, sequences kept whole in training."""
    gru_hidden: int = 128
    """GRU units of recurrent actors (64 for SMAC, 128 for SMAX MAPPO as in JaxMARL)."""


@dataclass
class KPGConfig:
    """The K-level recursion (Algorithm 1/2)."""

    k: int = 2
    """Recursion levels K >= 1; K = 1 is the base algorithm."""
    actor_optimizer: str = "auto"
    """auto (RMSProp when k > 1, the algorithm's Adam when k = 1), rmsprop, adam or sgd."""
    adaptive_tol: float | None = None
    """Stop the recursion once ‖θ⁽ᵏ⁾ − θ⁽ᵏ⁻¹⁾‖ / ‖θ⁽ᵏ⁾ − θ‖ < tol (k is the cap); null: always k levels."""
    log_every_n_steps: int = 1
    """Training steps between logs of the per-level diagnostics (kpg/level_delta_k, kpg/contraction_k, ...)."""
    scope: str = "update"
    """What one recursion wraps in on-policy algorithms: update (the actor's whole epochs x minibatches update)
    or step (each gradient step); off-policy algorithms take one step per update either way."""


@dataclass
class CollectorConfig:
    frames_per_batch: int = 600
    """Environment frames (steps x parallel envs) collected per training step."""
    init_random_frames: int = 0
    """Frames of uniformly random actions at the start of a run."""


@dataclass
class BufferConfig:
    size: int = 1_000_000
    """Replay capacity (off-policy algorithms) in the algorithm's replay unit: frames, or episodes for recurrent
    off-policy algorithms (QMIX/VDN/IQL, recurrent FACMAC/MADDPG; Appendix E.2: 5000 episodes)."""
    batch_size: int = 256
    """Items sampled per gradient update: frames, or whole episodes (Appendix E.2: 32)."""
    updates_per_batch: int = 10
    """Gradient updates (critic step + K-level actor step) per collected batch."""
    learning_starts: int = 0
    """Frames collected before the first update (episode replay also waits for ``batch_size`` episodes)."""
    episode_length: int | None = None
    """Steps each replayed episode is zero-padded to (episode replay); null: the environment's episode limit."""
    device: str = "auto"
    """Where replay is stored: auto (the training device when the replay's estimated size fits in half its free
    memory, else the CPU), cpu, cuda or cuda:N. The size is checked before allocating; on-policy algorithms have no
    replay and ignore it."""


@dataclass
class EvalConfig:
    every_frames: int = 12_000
    """Greedy evaluation period in frames (0 disables periodic evaluation; one still runs at the end)."""
    episodes: int = 10
    """Evaluation episodes, run in parallel environments."""
    max_steps: int | None = None
    """Steps per evaluation rollout; null: the env's ``max_steps`` (episode limit), else 1000."""
    absolute_episodes: int | None = None
    """Greedy episodes of the absolute metric (Gorsane et al., 2022): at the end of training the best evaluated
    policy (highest mean return, or win rate where the env reports wins) is evaluated again with this many episodes
    (``absolute_*`` in ``summary.json``); null: 10 x ``episodes``; 0: not run."""


@dataclass
class CheckpointConfig:
    every_frames: int = 30_000
    """Frames between checkpoints (one is always written at the end); collection restarts, reseeded, at each,
    so that a resumed run continues exactly as the uninterrupted one."""
    keep_last: int = 2
    """Complete checkpoints kept (older ones are deleted once a newer one is sealed)."""


@dataclass
class ProgressConfig:
    """The progress display: a bar in frames on a terminal; where the output is not one (SLURM logs, nohup), a line
    every ``every_s`` seconds and a last one at the end (``trainer.enable_progress_bar=false``: neither)."""

    every_s: float = 30.0
    """Seconds between progress lines without a terminal: frames, frames/s, latest training and evaluation return
    (win rate where the env reports wins), elapsed time and ETA."""


_TRAINER_SKIP = {"logger", "callbacks"}  # built from the ``logger`` and ``callbacks`` groups

TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",  # the default run is a CPU run: trainer.accelerator=gpu for a GPU
    "devices": 1,
    "max_epochs": -1,  # budgets are frames (max_frames): the module stops the trainer when they are reached
    "num_sanity_val_steps": 0,  # no validation loop: evaluation is a callback
    "log_every_n_steps": 1,
    "enable_checkpointing": True,  # frame-based checkpoints (the checkpoint group); false disables them
    "default_root_dir": "${hydra:runtime.output_dir}",  # the run directory
}
"""The project's defaults of the ``Trainer`` arguments that differ from Lightning's; every other argument keeps
Lightning's default."""


def _trainer_config() -> type:
    """A dataclass with every ``lightning.pytorch.Trainer`` argument and its default (Lightning's, or this project's
    from :data:`TRAINER_DEFAULTS`)."""
    from lightning.pytorch import Trainer

    parameters = inspect.signature(Trainer.__init__).parameters
    unknown = set(TRAINER_DEFAULTS) - set(parameters)
    if unknown:
        raise TypeError(f"TRAINER_DEFAULTS: not Trainer arguments: {', '.join(sorted(unknown))}")
    fields = [
        (name, Any, field(default=TRAINER_DEFAULTS.get(name, p.default)))
        for name, p in parameters.items()
        if name != "self" and name not in _TRAINER_SKIP
    ]
    return dataclasses.make_dataclass("TrainerConfig", fields)


TrainerConfig = _trainer_config()


@dataclass
class Config:
    """Root of the configuration; ``conf/config.yaml`` selects its group options."""

    seed: int = 0
    """Random seed of the run; the environments' collection and evaluation seeds derive from it."""
    max_frames: int = 300_000
    """Training budget in environment frames."""
    resume: str | None = None
    """Run directory or checkpoint path to continue from."""
    on_nonfinite: str = "stop"
    """stop (checkpoint the last finite state and stop) or skip (drop the update) on a NaN/inf loss or gradient."""
    compile: str = "none"
    """How each update (critic step, K-level actor step, targets) runs: none (eager, per-level timings), default
    (``torch.compile``) or cudagraphs (``torch.compile`` captured in a CUDA graph by tensordict's ``CudaGraphModule``:
    CUDA only). Compiled updates time as one ``update`` phase; ``kpg.adaptive_tol`` needs none."""
    algorithm: Any = MISSING
    env: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    kpg: KPGConfig = field(default_factory=KPGConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    trainer: Any = field(default_factory=TrainerConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    """Lightning loggers by name, instantiated from their ``_target_`` (``conf/logger/``: ``default`` TensorBoard + CSV,
    ``wandb`` offline and ``mlflow`` to a local file store, each with TensorBoard + CSV; ``logger.<name>=null`` drops
    one)."""
