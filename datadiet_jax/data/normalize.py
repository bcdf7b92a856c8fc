"""Per-channel normalization with the original Data Diet constants (0..255 scale)."""

import jax.numpy as jnp
import numpy as np

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32) * 255
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32) * 255
# The original used the CIFAR-10 constants for CIFAR-100 too.
CIFAR100_MEAN, CIFAR100_STD = CIFAR10_MEAN, CIFAR10_STD
CINIC10_MEAN = np.array([0.47889522, 0.47227842, 0.43047404], np.float32) * 255
CINIC10_STD = np.array([0.24205776, 0.23828046, 0.25874835], np.float32) * 255


def normalize(images, mean, std):
  """u8[..., C] -> f32[..., C]: (images - mean) / std, all on the 0..255 scale."""
  return (jnp.asarray(images, jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(
      std, jnp.float32)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """u8[N, H, W, C] -> (f32[C] mean, f32[C] std) on the 0..255 scale (std floored at 1)."""
  x = images.astype(np.float64).reshape(-1, images.shape[-1])
  return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1.0).astype(np.float32)


class ChannelSums:
  """`channel_stats` of images added one at a time (for data that is never all in memory):
  exact integer sums S and Q of the pixels and their squares, then mean = S / n and
  var = (nQ - S^2) / n^2, rounded once at the end."""

  def __init__(self, channels: int):
    self.n, self.s, self.q = 0, [0] * channels, [0] * channels

  def add(self, image: np.ndarray) -> None:
    """image: u8[H, W, C]."""
    flat = image.reshape(-1, len(self.s)).astype(np.int64)
    self.n += flat.shape[0]
    self.s = [a + int(b) for a, b in zip(self.s, flat.sum(0))]
    self.q = [a + int(b) for a, b in zip(self.q, (flat * flat).sum(0))]

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    """(f32[C] mean, f32[C] std), as channel_stats of every image added."""
    n = self.n
    mean = np.array([s / n for s in self.s], np.float64)
    var = np.array([(n * q - s * s) / (n * n) for s, q in zip(self.s, self.q)])
    return mean.astype(np.float32), np.maximum(np.sqrt(var), 1.0).astype(np.float32)
