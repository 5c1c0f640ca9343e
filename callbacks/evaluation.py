"""Greedy, decentralized evaluation episodes every N frames (Appendix E.2's protocol), and the absolute metric
(Gorsane et al., 2022): the best evaluated policy re-evaluated with more episodes at the end of training."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from kpg_lightning.envs.info import BATTLE_WON, DONE, EPISODE_REWARD
from kpg_lightning.metrics import log_at_frames

__all__ = ["EvaluationCallback", "episode_outcomes", "policy_state", "run_episodes"]

SCALARS = ("frames", "return_mean", "return_std", "win_rate")
"""The keys of an evaluation that are numbers (logged, shown); ``returns`` and ``wins`` are per-episode lists."""

MANY_ROLLOUTS = 10
"""More sequential rollouts than this in the absolute evaluation (an env that plays one episode at a time, SMAC)
get a note on the console: the end of training then takes a while."""


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


def policy_state(policy: nn.Module) -> dict[str, torch.Tensor]:
    """``policy.state_dict()`` with every tensor detached and copied to the CPU (a snapshot training cannot move)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in policy.state_dict().items()}


def _all_ranks(module: LightningModule, outcomes: dict[str, list[float]]) -> dict[str, list[float]]:
    """Every rank's per-episode lists, concatenated in rank order (one process: ``outcomes`` itself). Collective."""
    world = module.trainer.world_size if module._trainer is not None else 1
    if world == 1:
        return outcomes
    import torch.distributed as dist

    gathered: list[dict[str, list[float]] | None] = [None] * world
    dist.all_gather_object(gathered, outcomes)
    return {key: [x for rank in gathered for x in rank.get(key, [])] for key in outcomes}


class EvaluationCallback(Callback):
    """Runs ``episodes`` greedy episodes every ``every_frames`` frames and at the end of training.

    Logs ``eval/return_mean``, ``eval/return_std`` (and ``eval/win_rate`` where the env reports wins) and keeps
    the history for the run summary, each evaluation with its per-episode ``returns`` (and ``wins``) of all ranks.
    Keeps the best evaluated policy (:attr:`best`: the highest mean return, or win rate where the env reports wins;
    a tie keeps the earlier) and, at the end of training, evaluates it with ``absolute_episodes`` greedy episodes
    (:attr:`absolute`; 0: not), putting the last weights back afterwards.
    """

    def __init__(
        self, env: EnvBase, episodes: int, every_frames: int, max_steps: int, absolute_episodes: int | None = None
    ):
        self.env, self.episodes, self.every_frames, self.max_steps = env, episodes, every_frames, max_steps
        self.absolute_episodes = 10 * episodes if absolute_episodes is None else absolute_episodes
        self.history: list[dict[str, Any]] = []
        self.next_frames = 0
        self.best: dict[str, Any] | None = None
        """``{"frames", "metric", "value", "state_dict"}`` of the best evaluation so far (CPU tensors)."""
        self.absolute: dict[str, Any] | None = None
        """The absolute evaluation (:meth:`evaluate`'s keys) once training has ended."""

    @torch.no_grad()
    def _outcomes(self, policy: nn.Module, episodes: int) -> dict[str, list[float]]:
        """``episodes`` greedy episodes of this rank's env: ``return`` (and ``won``) per episode."""
        results = run_episodes(self.env, policy, episodes, self.max_steps)  # the env's generators move on
        return {key: values.tolist() for key, values in results.items()}

    def evaluate(
        self, pl_module: LightningModule, episodes: int | None = None, total: int | None = None
    ) -> dict[str, Any]:
        """``episodes`` (default ``self.episodes``) greedy episodes on each rank, gathered from all ranks (the first
        ``total`` of them): ``frames``, ``return_mean``, ``return_std`` and ``returns`` per episode, with
        ``win_rate`` and ``wins`` where the env reports wins. Collective."""
        outcomes = self._outcomes(pl_module.algorithm.policy(), episodes or self.episodes)
        outcomes = {key: values[:total] for key, values in _all_ranks(pl_module, outcomes).items()}
        returns = torch.tensor(outcomes["return"], dtype=torch.float32)  # the env's dtype: as before the lists
        metrics: dict[str, Any] = {
            "frames": float(pl_module.frames),
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std(unbiased=False)),
        }
        if "won" in outcomes:
            metrics["win_rate"] = float(torch.tensor(outcomes["won"], dtype=torch.float32).mean())
        return {**metrics, "returns": outcomes["return"], **({"wins": outcomes["won"]} if "won" in outcomes else {})}

    def _run(self, trainer: Trainer, pl_module: LightningModule, progress: bool = True) -> None:
        if self.history and self.history[-1]["frames"] == pl_module.frames:
            return
        metrics = self.evaluate(pl_module)  # each rank evaluates its own episodes; all ranks' are kept
        self.history.append(metrics)
        self._keep_if_best(pl_module, metrics)
        scalars = {f"eval/{k}": v for k, v in metrics.items() if k in SCALARS and k != "frames"}
        log_at_frames(pl_module, scalars, pl_module.frames)
        if progress:
            pl_module.log("eval_return", metrics["return_mean"], prog_bar=True, logger=False, batch_size=1)

    def _keep_if_best(self, pl_module: LightningModule, metrics: dict[str, Any]) -> None:
        """Snapshot the policy if ``metrics`` beat the best evaluation so far (ranks agree: the metrics are
        gathered from all of them)."""
        metric = "win_rate" if "win_rate" in metrics else "return"
        value = metrics["win_rate" if metric == "win_rate" else "return_mean"]
        best = self.best
        if best is not None and best["metric"] == metric and not math.isnan(best["value"]):
            if not value > best["value"]:  # a tie (or NaN) keeps the earlier policy
                return
        self.best = {
            "frames": int(pl_module.frames),
            "metric": metric,
            "value": float(value),
            "state_dict": policy_state(pl_module.algorithm.policy()),
        }

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
        if self.absolute_episodes > 0 and self.best is not None:
            self.absolute = self.evaluate_best(trainer, pl_module)

    def evaluate_best(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """The absolute metric: :attr:`best`'s weights in the policy for ``absolute_episodes`` greedy episodes
        (split over the ranks), then the policy's own weights back, buffers included. Collective."""
        n, world, parallel = self.absolute_episodes, trainer.world_size, max(1, self.env.batch_size.numel())
        per_rank = math.ceil(n / world)
        rollouts = math.ceil(per_rank / parallel)
        if rollouts > MANY_ROLLOUTS and trainer.is_global_zero:
            print(
                f"note: the absolute metric plays {n} greedy episodes in {rollouts} rollouts per rank "
                f"(eval.absolute_episodes; 0 turns it off)",
                file=sys.stderr,
            )
        policy = pl_module.algorithm.policy()
        last = policy_state(policy)
        try:
            policy.load_state_dict(self.best["state_dict"])  # in place: parameters and optimizers keep their tensors
            return self.evaluate(pl_module, per_rank, total=n)
        finally:
            policy.load_state_dict(last)

    def summary(self) -> dict[str, Any]:
        """The run summary's evaluation keys: ``eval_return_history`` and the ``absolute_*`` keys (null where no
        absolute evaluation ran; ``absolute_win_rate``/``absolute_wins`` null where the env reports no wins)."""
        absolute, best = self.absolute, self.best
        ran = absolute is not None and best is not None
        return {
            "eval_return_history": [{k: h[k] for k in (*SCALARS, "returns", "wins") if k in h} for h in self.history],
            "absolute_metric": best["metric"] if ran else None,
            "absolute_frames": best["frames"] if ran else None,
            "absolute_episodes": len(absolute["returns"]) if ran else None,
            "absolute_return_mean": absolute["return_mean"] if ran else None,
            "absolute_return_std": absolute["return_std"] if ran else None,
            "absolute_returns": absolute["returns"] if ran else None,
            "absolute_win_rate": absolute.get("win_rate") if ran else None,
            "absolute_wins": absolute.get("wins") if ran else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "next_frames": self.next_frames, "best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.next_frames = state_dict.get("next_frames", 0)
        self.best = state_dict.get("best")  # None in checkpoints from before the absolute metric
