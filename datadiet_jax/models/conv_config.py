"""What the custom convolutions share: the `conv_impl` names and the check that a
`lax.conv_general_dilated` call is one they handle (NHWC/HWIO, no groups, no input
dilation), with its padding resolved.

The im2col-matmul convolution (models/conv.py) and the oneDNN custom call
(models/onednn_conv.py) both import this module; it imports neither, so the two never
import each other back (conv.py imports onednn_conv lazily, only for conv_impl="onednn").
"""

from __future__ import annotations

from typing import Optional

from jax import lax

CONV_IMPLS = ("auto", "xla", "matmul", "onednn")


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
  n = lhs.ndim - 2
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  nhwc = (0, n + 1) + tuple(range(1, n + 1))
  hwio = (n + 1, n) + tuple(range(n))
  return tuple(dn.lhs_spec) == nhwc and tuple(dn.rhs_spec) == hwio and tuple(dn.out_spec) == nhwc


def nhwc_conv_config(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1,
                     batch_group_count=1) -> Optional[tuple]:
  """(strides, pads, dilation) of a `lax.conv_general_dilated` call the custom convolutions
  handle -- NHWC/HWIO, no groups, no input dilation, pads >= 0 (a padding string resolved as
  lax resolves it) -- or None for any other call, which they pass to lax unchanged."""
  n = lhs.ndim - 2
  if (feature_group_count != 1 or batch_group_count != 1
      or (lhs_dilation is not None and any(d != 1 for d in lhs_dilation))
      or not _is_nhwc(lhs, rhs, dimension_numbers)):
    return None
  strides = tuple(int(s) for s in window_strides)
  dilation = tuple(int(d) for d in rhs_dilation) if rhs_dilation is not None else (1,) * n
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:n], dilation)]
    padding = lax.padtype_to_pads(lhs.shape[1:-1], dilated, strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(lo < 0 or hi < 0 for lo, hi in pads):
    return None
  return strides, pads, dilation
