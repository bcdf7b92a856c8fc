"""Area under the margin (AUM; Pleiss et al. 2020, "Identifying Mislabeled Data using the
Area Under the Margin Ranking", Eq. 1-2), accumulated during training like forgetting.

  M_t(x, y) = z_y^(t) - max_{c != y} z_c^(t)       (logit margin at visit t, Eq. 1)
  AUM(x, y) = (1 / T) sum_{t=1}^{T} M_t(x, y)       (mean over the T visits, Eq. 2)

Orientation: the paper's (high = easy; low / negative = hard or mislabeled), the opposite of
the Data Diet scores' "higher = harder". Examples never visited score NaN.

The state is a pytree of arrays, so the training loop can update it on device each step
and save it with every checkpoint for exact resume (mirrors train/forgetting.py). It is not
in scores/registry.py: the registry holds functions of one model, AUM needs the trajectory.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class AUMState:
  """margin_sum: f32[N] sum of logit margins over visits; visits: i32[N]."""

  margin_sum: jax.Array
  visits: jax.Array


def init_aum(num_examples: int) -> AUMState:
  return AUMState(margin_sum=jnp.zeros((num_examples,), jnp.float32),
                  visits=jnp.zeros((num_examples,), jnp.int32))


def logit_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits: f32[B, C]; labels: i32[B] -> f32[B] z_y - max_{c != y} z_c."""
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  true = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return true - other


def update_aum(state: AUMState, example_ids: jax.Array, logits: jax.Array,
               labels: jax.Array) -> AUMState:
  """example_ids: i32[B] (distinct); logits: f32[B, C] of the train step; labels: i32[B]."""
  return AUMState(margin_sum=state.margin_sum.at[example_ids].add(logit_margin(logits, labels)),
                  visits=state.visits.at[example_ids].add(1))


def aum_score(state: AUMState) -> jax.Array:
  """f32[N] mean logit margin over visits (high = easy); NaN where never visited."""
  return jnp.where(state.visits > 0, state.margin_sum / jnp.maximum(state.visits, 1), jnp.nan)
