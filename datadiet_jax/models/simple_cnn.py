"""SimpleCNN, the original Data Diet's small convolutional network."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class SimpleCNN(nn.Module):
  """Per stage: 3x3 conv + ReLU, then 3x3 stride-2 conv + ReLU; global mean pool; dense.

  The original's `simple_cnn_0` is `channels=(32, 64, 128)`. No normalization layers,
  so `train` changes nothing (kept for a uniform model signature).
  """

  channels: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: f32[B, H, W, C] -> logits f32[B, num_classes]."""
    del train
    x = x.astype(self.dtype)
    for width in self.channels:
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype)(x))
      x = nn.relu(nn.Conv(width, (3, 3), (2, 2), padding="SAME", dtype=self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
