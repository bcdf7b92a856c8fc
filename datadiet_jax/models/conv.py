"""A convolution whose weight gradient is matmuls over im2col patches (for XLA:CPU).

XLA:CPU computes a convolution's *weight* gradient slowly: for a 3x3 conv 32x32x32 -> 32
channels at batch 128 (2 idle cores) the forward takes 35 ms, the input gradient 34 ms and
the weight gradient 473 ms, while the same contraction as one 2-D matmul over im2col patches
takes 32 ms. `matmul_wgrad_conv` is a drop-in `lax.conv_general_dilated` (flax's
`nn.Conv(conv_general_dilated=...)`) with a custom VJP:

  forward            XLA's convolution
  input gradient     XLA's own (the VJP of the same convolution w.r.t. its input)
  weight gradient    dW[k] = sum_(b, p) V_k[b, p, :]^T dY[b, p, :] for the kh x kw shifted
                     (strided, dilated) views V_k of the padded input, concatenated along
                     channels into patches U: f32[n*T, kh*kw*Cin] for a chunk of n images
                     and contracted with dY: f32[n*T, Cout] in one matmul per chunk; a
                     `lax.scan` over the chunks accumulates f32[kh*kw*Cin, Cout] -> HWIO.

The chunks hold about PATCH_CHUNK_BYTES of patches, so the patches are used while still
in cache instead of being written for the whole batch (kh*kw times the layer input) and
read back: XLA:CPU's concatenation of the shifted views runs at ~1.5 GB/s when it spills
to memory, and that copy, not the matmul, was what made the one-shot im2col slow.

The parameters are those of `nn.Conv` (same names, shapes, init), so params trees and
checkpoints do not change. Configurations it does not handle (grouped, input-dilated,
non-NHWC) call `lax.conv_general_dilated` unchanged. `conv_general_dilated_for(impl)`
picks the implementation: "auto" = this one on the CPU backend and XLA's on GPU/TPU (whose
weight gradients are fast), "xla" = always XLA's, "matmul" = always this one, "onednn" =
forward and both gradients by oneDNN custom calls (models/onednn_conv.py; CPU only, the
fastest on CPU, needs the `onednn` extra and a C++ compiler). The call check both
custom convolutions share (`nhwc_conv_config`, `CONV_IMPLS`) lives in models/conv_config.py,
which imports neither; onednn_conv.py is imported here lazily and never imports this module.

Measured: `python -m experiments.benchmarks.conv_layers` (per layer, against PyTorch) and
`python -m experiments.benchmarks.train_step --vs_torch` (whole step); tables and the
reason the models' default stays `conv_impl="xla"` in BUILD_NOTES.md ("Speed").
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from datadiet_jax.models.conv_config import CONV_IMPLS, nhwc_conv_config


def _xla_conv(x, w, config):
  strides, pads, dilation, precision = config
  n = len(strides)
  spec = ((0, n + 1) + tuple(range(1, n + 1)), (n + 1, n) + tuple(range(n)),
          (0, n + 1) + tuple(range(1, n + 1)))
  return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                  dimension_numbers=lax.ConvDimensionNumbers(*spec),
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, config):
  return _xla_conv(x, w, config)


def _conv_fwd(x, w, config):
  return _xla_conv(x, w, config), (x, w)


# Patches of about this many bytes per chunk of images: formed, contracted and dropped while
# they are still in cache. 512 KiB was the fastest of 0.5 / 2 / 8 MiB over SimpleCNN's six
# convs at batch 128 on the 2-core Xeon (benchmarks/conv_layers.py, BUILD_NOTES.md).
PATCH_CHUNK_BYTES = 512 << 10


def images_per_chunk(batch: int, patch_bytes_per_image: int,
                     chunk_bytes: int = PATCH_CHUNK_BYTES) -> int:
  """How many images' patches the weight gradient forms at once (>= 1, <= batch)."""
  return max(1, min(batch, chunk_bytes // max(1, patch_bytes_per_image)))


def _patch_matmul(x, dy, kernel_size, config):
  """sum_(b, p) U[b, p, :]^T dY[b, p, :] for the im2col patches U of x: f32[b, *in, Cin]
  and dy: f32[b, *out, Cout] -> f32[prod(kernel_size) * Cin, Cout]."""
  strides, pads, dilation, _ = config
  channels, out_spatial = x.shape[-1], dy.shape[1:-1]
  xpad = lax.pad(x, jnp.zeros((), x.dtype),
                 [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
  views = []
  for offset in itertools.product(*(range(k) for k in kernel_size)):
    start = [0] + [o * d for o, d in zip(offset, dilation)] + [0]
    limit = ([x.shape[0]] + [s + st * (n - 1) + 1 for s, st, n in
                             zip(start[1:-1], strides, out_spatial)] + [channels])
    views.append(lax.slice(xpad, start, limit, [1, *strides, 1]))
  patches = jnp.concatenate(views, axis=-1).reshape(-1, len(views) * channels)
  return lax.dot_general(patches, dy.reshape(-1, dy.shape[-1]), (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)


def weight_gradient(x: jax.Array, dy: jax.Array, kernel_shape: tuple, config,
                    chunk_bytes: int = PATCH_CHUNK_BYTES) -> jax.Array:
  """d loss / d kernel of an NHWC conv from x: [B, *in, Cin] and dy: [B, *out, Cout] as
  matmuls over im2col patches -> [*kernel_size, Cin, Cout] (in x's dtype).

  The batch is split into chunks of `images_per_chunk` images and a `lax.scan` forms each
  chunk's patches f32[n * T, kh*kw*Cin] and accumulates its f32[kh*kw*Cin, Cout] product,
  so the patches (kh*kw times the layer input) never exist for the whole batch at once. A
  batch that is not a multiple of the chunk is zero-padded (zero rows add nothing).
  """
  kernel_size = tuple(kernel_shape[:-2])
  batch, taps = x.shape[0], math.prod(kernel_size)
  per_image = taps * x.shape[-1] * math.prod(dy.shape[1:-1]) * x.dtype.itemsize
  n = images_per_chunk(batch, per_image, chunk_bytes)
  if n >= batch:
    return _patch_matmul(x, dy, kernel_size, config).reshape(kernel_shape).astype(x.dtype)
  chunks = -(-batch // n)
  if chunks * n != batch:
    extra = chunks * n - batch
    x = jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))
    dy = jnp.pad(dy, [(0, extra)] + [(0, 0)] * (dy.ndim - 1))
  xs = x.reshape(chunks, n, *x.shape[1:])
  dys = dy.reshape(chunks, n, *dy.shape[1:])

  def accumulate(total, chunk):
    return total + _patch_matmul(*chunk, kernel_size, config), None

  total = jnp.zeros((taps * x.shape[-1], dy.shape[-1]), jnp.float32)
  total, _ = lax.scan(accumulate, total, (xs, dys))
  return total.reshape(kernel_shape).astype(x.dtype)


def _conv_bwd(config, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, w, config), x)
  (dx,) = input_vjp(dy)
  return dx, weight_gradient(x, dy, w.shape, config).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def matmul_wgrad_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                      dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                      precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with the im2col-matmul weight gradient (NHWC/HWIO, no
  groups, no input dilation); anything else is passed to lax unchanged."""
  config = None if preferred_element_type is not None else nhwc_conv_config(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count)
  if config is None:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
  return _conv(lhs, rhs, (*config, precision))


def conv_general_dilated_for(impl: str) -> Optional[Callable]:
  """The `conv_general_dilated` for flax's nn.Conv: None (XLA's), matmul_wgrad_conv or
  onednn_conv (models/onednn_conv.py: forward and both gradients by oneDNN, CPU only).

  "auto" decides from `jax.default_backend()` when the model is traced.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl '{impl}'; choose one of {', '.join(CONV_IMPLS)}")
  if impl == "onednn":
    from datadiet_jax.models.onednn_conv import onednn_conv  # pylint: disable=g-import-not-at-top
    return onednn_conv
  if impl == "matmul" or (impl == "auto" and jax.default_backend() == "cpu"):
    return matmul_wgrad_conv
  return None
