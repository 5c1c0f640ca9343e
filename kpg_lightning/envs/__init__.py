"""Environment adapters.

Every adapter returns a TorchRL ``EnvBase`` that follows one contract, which the algorithms rely on:

- one agent group ``"agents"``; observations ``("agents", "observation")`` float32 ``[*B, N, obs]``;
- continuous actions ``("agents", "action")`` with a ``Bounded`` spec ``[*B, N, act]``; discrete actions with a
  ``Categorical`` spec ``[*B, N]`` and the available-action mask ``("agents", "action_mask")`` ``[*B, N, n]``;
  padded continuous action dimensions (uneven partitions) flagged by ``("agents", "action_dim_mask")``;
- rewards ``("agents", "reward")`` ``[*B, N, 1]``; ``done``/``terminated``/``truncated`` ``[*B, 1]`` at the root
  (time limits are truncations, so targets bootstrap through them);
- a global ``"state"`` ``[*B, S]`` at the root where the environment has one (else critics use the
  concatenated observations); ``"battle_won"`` ``[*B, 1]`` for StarCraft-like games.
"""
