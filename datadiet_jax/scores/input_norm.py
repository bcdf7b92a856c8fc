"""Input norm (Kirsch 2023): the L2 norm of the flattened *normalized* image; no model.

Kirsch found it ranks examples almost like GraNd at initialisation (Spearman 0.96 on
CIFAR-10), which is why it is a baseline for "GraNd at init".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def input_norm_of(images: jax.Array) -> jax.Array:
  """images: f32[B, H, W, C] normalized -> f32[B] L2 norms."""
  return jnp.linalg.norm(images.astype(jnp.float32).reshape(images.shape[0], -1), axis=-1)


def input_norm(apply_fn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """Input norm with the common score signature; apply_fn, variables, labels are unused."""
  del apply_fn, variables, labels
  if isinstance(images, dict):
    from datadiet_jax.scores.errors import ScoreError  # pylint: disable=g-import-not-at-top
    raise ScoreError("input_norm is the norm of a normalized image; text has no such input "
                     "(drop it from --scores)")
  return input_norm_of(images)
