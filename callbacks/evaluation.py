"""Greedy, decentralized evaluation episodes every N frames (Appendix E.2's protocol)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from kpg_lightning.envs.info import BATTLE_WON, DONE, EPISODE_REWARD
from kpg_lightning.metrics import log_at_frames, mean_over_ranks

__all__ = ["EvaluationCallback", "episode_outcomes", "run_episodes"]


def episode_outcomes(rollout: TensorDictBase) -> dict[str, torch.Tensor]:
    """Return (and win flag, where the env reports one) of the first episode of every env in a rollout.

    ``rollout`` is ``[*envs, T]`` with ``("next", "agents", "episode_reward")`` from TorchRL's ``RewardSum``; an
    episode cut by the rollout's end counts with the return reached so far.
    """
    rollout = rollout.reshape(-1, rollout.shape[-1])
    done = rollout.get(("next", DONE)).squeeze(-1).clone()
    done[:, -1] = True
    first = done.float().argmax(dim=-1)
    rows = torch.arange(rollout.shape[0])
    returns = rollout.get(("next", *EPISODE_REWARD))[rows, first].mean(dim=(-2, -1))
    out = {"return": returns}
    if ("next", BATTLE_WON) in rollout.keys(True, True):
        out["won"] = rollout.get(("next", BATTLE_WON))[rows, first].reshape(-1).float()
    return out


@torch.no_grad()
def run_episodes(
    env: EnvBase,
    policy: TensorDictModuleBase,
    episodes: int,
    max_steps: int,
    exploration: ExplorationType = ExplorationType.DETERMINISTIC,
    callback: Callable[[EnvBase, TensorDictBase], Any] | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`episode_outcomes` of ``episodes`` episodes of ``policy`` (greedy by default) in ``env``: its
    ``env.batch_size`` envs side by side, in as many rounds as needed, each rollout at most ``max_steps`` steps.
    ``callback(env, td)`` runs after every step (TorchRL's ``rollout`` callback)."""
    parallel = max(1, env.batch_size.numel())
    # TorchRL 0.14's break_when_all_done leaves a nested "_neg_step" behind (KeyError) when an env has
    # per-agent done flags (SMAX): run those for max_steps; only the first episode of each env is read anyway
    stop_early = all(isinstance(key, str) for key in env.done_keys)
    results: dict[str, list[torch.Tensor]] = {}
    with set_exploration_type(exploration):
        for _ in range(math.ceil(episodes / parallel)):
            rollout = env.rollout(
                max_steps,
                policy,
                callback=callback,
                auto_cast_to_device=True,
                break_when_any_done=False,
                break_when_all_done=stop_early,
            )
            for key, value in episode_outcomes(rollout.cpu()).items():
                results.setdefault(key, []).append(value)
    return {key: torch.cat(values)[:episodes] for key, values in results.items()}


class EvaluationCallback(Callback):
    """Runs ``episodes`` greedy episodes every ``every_frames`` frames and at the end of training.

    Logs ``eval/return_mean``, ``eval/return_std`` (and ``eval/win_rate`` where the env reports wins) and keeps
    the history for the run summary.
    """

    def __init__(self, env: EnvBase, episodes: int, every_frames: int, max_steps: int):
        self.env, self.episodes, self.every_frames, self.max_steps = env, episodes, every_frames, max_steps
        self.history: list[dict[str, float]] = []
        self.next_frames = 0

    @torch.no_grad()
    def evaluate(self, pl_module: LightningModule) -> dict[str, float]:
        results = run_episodes(self.env, pl_module.algorithm.policy(), self.episodes, self.max_steps)
        returns = results["return"]
        metrics = {
            "frames": float(pl_module.frames),
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std(unbiased=False)),
        }
        if "won" in results:
            metrics["win_rate"] = float(results["won"].mean())
        return metrics

    def _run(self, trainer: Trainer, pl_module: LightningModule, progress: bool = True) -> None:
        if self.history and self.history[-1]["frames"] == pl_module.frames:
            return
        metrics = mean_over_ranks(pl_module, self.evaluate(pl_module))  # each rank evaluates its own episodes
        self.history.append(metrics)
        log_at_frames(pl_module, {f"eval/{k}": v for k, v in metrics.items() if k != "frames"}, pl_module.frames)
        if progress:
            pl_module.log("eval_return", metrics["return_mean"], prog_bar=True, logger=False, batch_size=1)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_frames > 0 and pl_module.frames == 0:
            self._run(trainer, pl_module, progress=False)
            self.next_frames = self.every_frames

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every_frames > 0 and pl_module.frames >= self.next_frames:
            self._run(trainer, pl_module)
            self.next_frames = pl_module.frames - pl_module.frames % self.every_frames + self.every_frames

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer, pl_module, progress=False)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "next_frames": self.next_frames}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.next_frames = state_dict.get("next_frames", 0)
