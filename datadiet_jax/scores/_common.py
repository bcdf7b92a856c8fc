"""Helpers shared by the score families (not part of the public API)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from datadiet_jax.train.tasks import sequence_labels, sequence_logits

# apply_fn(variables, inputs) -> outputs, the eval-mode model. inputs: normalized images
# f32[B, H, W, C], or a text batch's {'token_ids', 'attention_mask'} i32[B, L]; outputs:
# logits f32[B, C], or {'intent': f32[B, C], 'slots': f32[B, L, S]} (joint intent + slot).
ApplyFn = Callable[[dict, jax.Array], jax.Array]


def eval_apply_fn(model) -> ApplyFn:
  """The eval-mode forward pass of a flax `model`: BatchNorm uses its running statistics.

  Returns apply_fn(variables, images f32[B, H, W, C]) -> logits f32[B, C]; examples are
  independent of each other, so per-example scores do not depend on the batch.
  """
  return lambda variables, images: model.apply(variables, images, train=False)


def probabilities_and_onehot(apply_fn: ApplyFn, variables, images: jax.Array,
                             labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(softmax probabilities f32[B, C], one-hot labels f32[B, C]) of the model's sequence
  logits (the intent logits of a joint model; labels then {'intent', 'slots'})."""
  logits = sequence_logits(apply_fn(variables, images)).astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  return probs, jax.nn.one_hot(sequence_labels(labels), logits.shape[-1], dtype=jnp.float32)
