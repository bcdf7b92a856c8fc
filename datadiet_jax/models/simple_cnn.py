"""SimpleCNN, the original Data Diet's small convolutional network."""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from datadiet_jax.models.conv import conv_general_dilated_for


class SimpleCNN(nn.Module):
  """Per stage: 3x3 conv + ReLU, then 3x3 stride-2 conv + ReLU; global mean pool; dense.

  The original's `simple_cnn_0` is `channels=(32, 64, 128)`. No normalization layers,
  so `train` changes nothing (kept for a uniform model signature). `conv_impl` ("auto",
  "xla", "matmul"; see conv.py) only changes how the convolution's weight gradient is
  computed, not the parameters.
  """

  channels: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: f32[B, H, W, C] -> logits f32[B, num_classes]."""
    del train
    x = x.astype(self.dtype)
    conv = functools.partial(nn.Conv, padding="SAME", dtype=self.dtype,
                             conv_general_dilated=conv_general_dilated_for(self.conv_impl))
    for width in self.channels:
      x = nn.relu(conv(width, (3, 3))(x))
      x = nn.relu(conv(width, (3, 3), (2, 2))(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
