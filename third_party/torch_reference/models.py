"""PyTorch SimpleCNN and ResNet18-lowres written from the architecture description, not
from the flax code, to regression-test the JAX models and scores.

Conventions matched to flax/lax:
* 'SAME' padding: total padding max((ceil(H / s) - 1) * s + k - H, 0), split with the
  smaller half first (lo = total // 2, hi = total - lo). For a 3x3 stride-2 conv on an
  even size that is (0, 1) -- asymmetric -- which torch's symmetric `padding=` cannot
  express, so every conv pads with F.pad and then convolves with padding=0.
* BatchNorm2d eps 1e-5; torch momentum 0.1 = 1 - flax momentum 0.9. Eval mode uses the
  running statistics.
* Layout NCHW inside; the models take NHWC input like the flax models and transpose.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(lo, hi) padding of one spatial dim under lax 'SAME'."""
  out = math.ceil(size / stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
  """nn.Conv2d with lax 'SAME' padding (possibly asymmetric), applied with F.pad."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
               bias: bool = True):
    super().__init__(in_channels, out_channels, kernel, stride=stride, padding=0, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    kh, kw = self.kernel_size
    sh, sw = self.stride
    top, bottom = same_padding(x.shape[-2], kh, sh)
    left, right = same_padding(x.shape[-1], kw, sw)
    if top or bottom or left or right:
      x = F.pad(x, (left, right, top, bottom))
    return super().forward(x)


def batch_norm(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # torch momentum = 1 - 0.9


class TorchSimpleCNN(nn.Module):
  """Per stage: conv3x3 + ReLU, conv3x3 stride 2 + ReLU (both with bias); mean pool; linear."""

  def __init__(self, channels: Sequence[int], num_classes: int, in_channels: int = 3):
    super().__init__()
    convs = []
    for width in channels:
      convs += [SameConv2d(in_channels, width, 3), SameConv2d(width, width, 3, stride=2)]
      in_channels = width
    self.convs = nn.ModuleList(convs)
    self.fc = nn.Linear(in_channels, num_classes)

  def forward(self, x_nhwc: torch.Tensor) -> torch.Tensor:
    x = x_nhwc.permute(0, 3, 1, 2)
    for conv in self.convs:
      x = F.relu(conv(x))
    return self.fc(x.mean(dim=(2, 3)))


class TorchBasicBlock(nn.Module):
  """conv3x3(stride)-BN-ReLU-conv3x3-BN, + shortcut (1x1 conv + BN on shape change), ReLU."""

  def __init__(self, in_channels: int, filters: int, stride: int):
    super().__init__()
    self.conv1 = SameConv2d(in_channels, filters, 3, stride=stride, bias=False)
    self.bn1 = batch_norm(filters)
    self.conv2 = SameConv2d(filters, filters, 3, bias=False)
    self.bn2 = batch_norm(filters)
    self.project = stride != 1 or in_channels != filters
    if self.project:
      self.proj_conv = SameConv2d(in_channels, filters, 1, stride=stride, bias=False)
      self.proj_bn = batch_norm(filters)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = self.proj_bn(self.proj_conv(x)) if self.project else x
    return F.relu(shortcut + y)


class TorchResNetLowres(nn.Module):
  """ResNet V1 for 32x32: 3x3 stride-1 stem conv + BN + ReLU, no max pool, stages of
  basic blocks with n, 2n, 4n, 8n filters (first block of stages 2-4 has stride 2),
  global mean pool, linear head."""

  def __init__(self, num_classes: int, num_filters: int = 64,
               stage_sizes: Sequence[int] = (2, 2, 2, 2), in_channels: int = 3):
    super().__init__()
    self.stem = SameConv2d(in_channels, num_filters, 3, bias=False)
    self.stem_bn = batch_norm(num_filters)
    blocks, channels = [], num_filters
    for i, size in enumerate(stage_sizes):
      for j in range(size):
        filters = num_filters * 2**i
        blocks.append(TorchBasicBlock(channels, filters, 2 if i > 0 and j == 0 else 1))
        channels = filters
    self.blocks = nn.ModuleList(blocks)
    self.fc = nn.Linear(channels, num_classes)

  def forward(self, x_nhwc: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem(x_nhwc.permute(0, 3, 1, 2))))
    for block in self.blocks:
      x = block(x)
    return self.fc(x.mean(dim=(2, 3)))


def TorchResNet18(num_classes: int, num_filters: int = 64) -> TorchResNetLowres:
  return TorchResNetLowres(num_classes, num_filters, (2, 2, 2, 2))
