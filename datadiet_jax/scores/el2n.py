"""Error-norm scores (Paul et al. 2021): distance of the softmax output to the one-hot label.

  el2n(x, y)     = || softmax(f(x)) - onehot(y) ||_2   (the norm, not its square)
  l1_error(x, y) = || softmax(f(x)) - onehot(y) ||_1

High = hard (or mislabelled); the paper keeps the highest EL2N examples.

Joint intent + slot models ("NLU on Data Diets", Attendu & Corbeil 2023): with
e_int = || softmax(intent) - onehot(y_int) ||_2 and, for every *labelled* token t (the
first sub-token of a word; padding, specials and other sub-tokens never count),
e_t = || softmax(slots_t) - onehot(y_t) ||_2,

  el2n       = sqrt(e_int^2 + sum_t e_t^2)      (the norm of all errors stacked)
  el2n_sum   = e_int + sum_t e_t
  el2n_mean  = e_int + (1 / T) sum_t e_t        (T = labelled tokens of the example)

For plain logits all three are the EL2N above.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datadiet_jax.scores._common import ApplyFn, probabilities_and_onehot
from datadiet_jax.train.tasks import token_mask


def error_norm(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits f32[..., C], labels i32[...] -> f32[...] || softmax(logits) - onehot ||_2."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  return jnp.linalg.norm(probs - onehot, ord=2, axis=-1)


def joint_errors(outputs: dict, labels: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(e_int f32[B], e_t f32[B, L] (0 at unlabelled tokens), T i32[B] labelled tokens)."""
  mask = token_mask(labels["slots"])
  per_token = error_norm(outputs["slots"], jnp.where(mask, labels["slots"], 0))
  return (error_norm(outputs["intent"], labels["intent"]), jnp.where(mask, per_token, 0.0),
          jnp.sum(mask, axis=-1))


def joint_el2n(outputs, labels, combine: str = "sqrt") -> jax.Array:
  """f32[B]: the joint EL2N of {'intent', 'slots'} outputs (combine: sqrt, sum, mean)."""
  if not isinstance(outputs, dict):
    return error_norm(outputs, labels)
  e_int, e_tok, count = joint_errors(outputs, labels)
  if combine == "sqrt":
    return jnp.sqrt(e_int**2 + jnp.sum(e_tok**2, axis=-1))
  if combine == "sum":
    return e_int + jnp.sum(e_tok, axis=-1)
  return e_int + jnp.sum(e_tok, axis=-1) / jnp.maximum(count, 1)


def el2n(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """EL2N. images: normalized f32[B, H, W, C] (or text inputs); labels: i32[B] (or
  {'intent', 'slots'}: the joint EL2N) -> f32[B]."""
  return joint_el2n(apply_fn(variables, images), labels, "sqrt")


def el2n_sum(apply_fn: ApplyFn, variables, inputs, labels) -> jax.Array:
  """Joint EL2N, "sum" variant e_int + sum_t e_t (EL2N for plain logits) -> f32[B]."""
  return joint_el2n(apply_fn(variables, inputs), labels, "sum")


def el2n_mean(apply_fn: ApplyFn, variables, inputs, labels) -> jax.Array:
  """Joint EL2N, "mean" variant e_int + mean_t e_t (EL2N for plain logits) -> f32[B]."""
  return joint_el2n(apply_fn(variables, inputs), labels, "mean")


def l1_error(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """L1 error norm. images: f32[B, H, W, C] normalized; labels: i32[B] -> f32[B] in [0, 2]."""
  probs, onehot = probabilities_and_onehot(apply_fn, variables, images, labels)
  return jnp.sum(jnp.abs(probs - onehot), axis=-1)
