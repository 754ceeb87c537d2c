"""r1kit GRPO core.

Shape convention, used everywhere in this repo: a tensor's name ends with its dimensions.
  B  rows of a batch (one row = one completion)     G  completions per prompt (group size)
  P  prompts in a batch                             T  completion tokens (padded)
  L  full sequence length (prompt + completion)     V  vocabulary
  E  routed experts                                 K  experts chosen per token (top-k)
e.g. ``logp_BT`` (per-token log-probabilities), ``adv_B`` (one advantage per completion),
``reward_PG`` (rewards of P groups of G), ``mask_BT`` (1 where a completion token is real).
"""
