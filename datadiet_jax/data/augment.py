"""On-device augmentation: reflect-pad 4, random crop back to H x W, random horizontal flip.

Runs inside jit with an explicit PRNG key; each example gets its own crop offset and
flip, as tf.image.random_crop / random_flip_left_right did in the original.
"""

import jax
import jax.numpy as jnp


def pad_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """images: f32[B, H, W, C] -> f32[B, H, W, C], augmented per example."""
  batch, height, width, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (batch,))

  def crop_one(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, image.shape[-1]))
    return jnp.where(flip, crop[:, ::-1, :], crop)

  return jax.vmap(crop_one)(padded, offsets, flips)
