"""Environment adapters.

Every adapter returns a TorchRL ``EnvBase`` that follows one contract, which the algorithms rely on (the keys are
defined once, in :mod:`kpg_lightning.envs.info`):

- one agent group ``"agents"`` (``GROUP``); observations ``("agents", "observation")`` (``OBS``) float32
  ``[*B, N, obs]``;
- continuous actions ``("agents", "action")`` (``ACTION``) with a ``Bounded`` spec ``[*B, N, act]``; discrete
  actions with a ``Categorical`` spec ``[*B, N]`` and the available-action mask ``("agents", "action_mask")``
  (``ACTION_MASK``) ``[*B, N, n]``; padded continuous action dimensions (uneven partitions) flagged by
  ``("agents", "action_dim_mask")`` (``ACTION_DIM_MASK``);
- rewards ``("agents", "reward")`` (``REWARD``) ``[*B, N, 1]``; ``done``/``terminated``/``truncated`` ``[*B, 1]`` at
  the root (time limits are truncations, so targets bootstrap through them);
- a global ``"state"`` (``STATE``) ``[*B, S]`` at the root where the simulator has one; where it has none (VMAS) the
  adapter adds none: :func:`~kpg_lightning.envs.info.global_state`, the one rule every critic and mixer input
  follows, uses the concatenated observations instead (a stored copy would double the observations' share of
  replay); ``"battle_won"`` (``BATTLE_WON``) ``[*B, 1]`` for StarCraft-like games.
"""
