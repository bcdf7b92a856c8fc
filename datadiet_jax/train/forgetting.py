"""Forgetting events (Toneva et al. 2019) tracked exactly as the original Data Diet code.

An example is *forgotten* when it goes from correctly to incorrectly classified between
two consecutive visits, judged from the logits of the train step (augmented input, before
the update). The first visit compares against "incorrect", so it can never count as a
forgetting event. Examples never classified correctly score +inf.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ForgetStats:
  """prev_correct: bool[N]; num_forgets: i32[N]; ever_correct: bool[N] (N = dataset size)."""

  prev_correct: jax.Array
  num_forgets: jax.Array
  ever_correct: jax.Array


def init_forget_stats(num_examples: int) -> ForgetStats:
  return ForgetStats(prev_correct=jnp.zeros((num_examples,), bool),
                     num_forgets=jnp.zeros((num_examples,), jnp.int32),
                     ever_correct=jnp.zeros((num_examples,), bool))


def update_forget_stats(stats: ForgetStats, example_ids: jax.Array,
                        correct: jax.Array) -> ForgetStats:
  """example_ids: i32[B] (distinct); correct: bool[B] from the train step's logits."""
  forgot = stats.prev_correct[example_ids] & ~correct
  return ForgetStats(
      prev_correct=stats.prev_correct.at[example_ids].set(correct),
      num_forgets=stats.num_forgets.at[example_ids].add(forgot.astype(jnp.int32)),
      ever_correct=stats.ever_correct.at[example_ids].set(stats.ever_correct[example_ids]
                                                          | correct))


def forgetting_scores(stats: ForgetStats) -> jax.Array:
  """f32[N]: number of forgetting events; +inf for examples never classified correctly."""
  return jnp.where(stats.ever_correct, stats.num_forgets.astype(jnp.float32), jnp.inf)
