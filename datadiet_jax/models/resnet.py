"""ResNet V1 for 32x32 inputs ("lowres"), as in the original Data Diet code.

3x3 stride-1 stem, no max pool, 4 stages (filters n, 2n, 4n, 8n), 1x1 projection
shortcut on shape change, BatchNorm momentum 0.9 / eps 1e-5, global mean pool, dense.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from datadiet_jax.models.conv import conv_general_dilated_for


class BasicBlock(nn.Module):
  filters: int
  conv: Callable
  norm: Callable
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters, (3, 3))(y))
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(x)
      x = self.norm(name="norm_proj")(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  filters: int
  conv: Callable
  norm: Callable
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
    y = self.norm(scale_init=nn.initializers.zeros)(self.conv(self.filters * 4, (1, 1))(y))
    if x.shape != y.shape:
      x = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(x)
      x = self.norm(name="norm_proj")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block_cls: Any
  num_classes: int
  num_filters: int = 64
  dtype: Any = jnp.float32
  conv_impl: str = "xla"  # the conv weight gradient, see conv.py; params do not change

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: f32[B, H, W, C] -> logits f32[B, num_classes]. `train` selects batch statistics."""
    conv = functools.partial(nn.Conv, use_bias=False, padding="SAME", dtype=self.dtype,
                             conv_general_dilated=conv_general_dilated_for(self.conv_impl))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    x = conv(self.num_filters, (3, 3), name="conv_init")(x.astype(self.dtype))
    x = nn.relu(norm(name="bn_init")(x))
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(self.num_filters * 2**i, conv=conv, norm=norm, strides=strides)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
