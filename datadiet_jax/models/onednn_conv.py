"""A convolution computed by oneDNN through XLA FFI custom calls (CPU, float32, 2-D NHWC).

XLA:CPU's own convolutions run at 60-120 GFLOP/s on the 2-core Xeon these numbers come from
(its weight gradient at 20-30), PyTorch's (oneDNN's JIT kernels) at 150-300: summed over
SimpleCNN's six convolutions at batch 128, XLA's forward + input gradient + weight gradient
take ~230 ms, oneDNN's ~70 ms (benchmarks/conv_layers.py; tables in BUILD_NOTES.md). So
`onednn_conv`, a drop-in `lax.conv_general_dilated` (flax's
`nn.Conv(conv_general_dilated=...)`), hands all three to oneDNN:

  forward            datadiet_onednn_conv_fwd           x, w -> y
  input gradient     datadiet_onednn_conv_bwd_data      dy, w -> dx
  weight gradient    datadiet_onednn_conv_bwd_weights   x, dy -> dw

(a `jax.custom_vjp`; the kernels are in onednn_conv.cc). The buffers are XLA's own, passed
without copies; oneDNN runs on its OpenMP threads while XLA waits for the call (keep
OMP_WAIT_POLICY unset or PASSIVE: with ACTIVE the spinning OpenMP threads take the cores
from XLA's between calls, 190 vs 105 ms for a SimpleCNN step on 2 cores).

The C++ is compiled on first use (g++, ~10 s) against jaxlib's FFI headers and the oneDNN
of the `onednn` extra (`pip install 'datadiet_jax[onednn]'`: Intel's onednn-cpu-gomp and
its headers, Linux x86-64), cached under $DATADIET_CACHE/onednn_conv (default
~/.cache/datadiet_jax, as for decoded images) by a hash of the source, jax's version and
the paths, and written atomically. `onednn_available()` says whether that can work here,
with the reason if not.

Anything the kernels do not cover (not 2-D, not float32, grouped, input-dilated,
non-NHWC/HWIO, negative padding) goes to `lax.conv_general_dilated` unchanged. Under
`vmap` the calls run once per mapped element (`vmap_method="sequential"`). The parameters
are nn.Conv's, so params trees and checkpoints do not depend on the implementation.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from datadiet_jax.models.conv_config import nhwc_conv_config

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
# The CPU build of oneDNN on PyPI (GNU OpenMP) and its headers; the versions must match.
LIBRARY_DIST, HEADERS_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
_TARGETS = {"fwd": "DatadietOnednnConvFwd", "bwd_data": "DatadietOnednnConvBwdData",
            "bwd_weights": "DatadietOnednnConvBwdWeights"}
INSTALL_HINT = ("install the extra: pip install 'datadiet_jax[onednn]' (Linux x86-64), or "
                "use conv_impl=matmul / xla")


class OnednnUnavailable(RuntimeError):
  """The oneDNN convolution cannot be built or loaded here (the message says why)."""


def _dist_file(dist: str, name: str) -> pathlib.Path:
  try:
    files = importlib.metadata.distribution(dist).files or ()
  except importlib.metadata.PackageNotFoundError:
    raise OnednnUnavailable(f"conv_impl='onednn' needs the package {dist}, which is not "
                            f"installed; {INSTALL_HINT}") from None
  for f in files:
    if f.name == name:
      return pathlib.Path(f.locate()).resolve()
  raise OnednnUnavailable(f"the installed {dist} has no {name}; reinstall it ({INSTALL_HINT})")


def _cache_dir() -> pathlib.Path:
  """Beside the decoded-image cache: `$DATADIET_CACHE`, else ~/.cache/datadiet_jax."""
  root = os.path.expanduser(os.environ.get("DATADIET_CACHE") or "~/.cache/datadiet_jax")
  return pathlib.Path(root) / "onednn_conv"


def build_library() -> pathlib.Path:
  """Compiles onednn_conv.cc (once per source/jax/oneDNN; cached) -> the shared library."""
  header = _dist_file(HEADERS_DIST, "dnnl.hpp")
  include_dir = header.parent.parent.parent if header.parent.name == "dnnl" else header.parent
  library = _dist_file(LIBRARY_DIST, "libdnnl.so.3")
  compiler = os.environ.get("CXX", "g++")
  if shutil.which(compiler) is None:
    raise OnednnUnavailable(f"conv_impl='onednn' compiles a small C++ file on first use, but "
                            f"the C++ compiler '{compiler}' (from $CXX, default g++) was not "
                            "found; install g++ or set CXX, or use conv_impl=matmul / xla")
  source = SOURCE.read_bytes()
  key = hashlib.sha256(b"\0".join([source, jax.__version__.encode(), str(include_dir).encode(),
                                   str(library).encode(), compiler.encode()])).hexdigest()[:16]
  target = _cache_dir() / f"libdatadiet_onednn_conv_{key}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(suffix=".so.partial", dir=target.parent)
  os.close(fd)
  command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
             f"-I{jax.ffi.include_dir()}", f"-I{include_dir}", str(SOURCE), "-o", partial,
             f"-L{library.parent}", f"-l:{library.name}", f"-Wl,-rpath,{library.parent}"]
  try:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise OnednnUnavailable("compiling the oneDNN convolution failed:\n  "
                              + " ".join(command) + "\n" + done.stderr[-3000:])
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target


_registered = False
_lock = threading.Lock()


def ensure_registered() -> None:
  """Builds (if needed), loads and registers the three FFI targets for the CPU platform."""
  global _registered
  with _lock:
    if _registered:
      return
    library = ctypes.CDLL(str(build_library()))
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(f"datadiet_onednn_conv_{name}",
                                  jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    _registered = True


@functools.lru_cache(maxsize=None)
def onednn_available() -> tuple[bool, str]:
  """(True, "") if the oneDNN convolution builds and loads here, else (False, why)."""
  try:
    ensure_registered()
  except (OnednnUnavailable, OSError) as e:
    return False, str(e)
  return True, ""


def check_onednn() -> None:
  """Raises ValueError (a user error: what is missing and the fix) unless the oneDNN
  convolution can run here: the CPU backend, the extra installed, a compiler."""
  if jax.default_backend() != "cpu":
    raise ValueError(f"conv_impl='onednn' runs on the CPU backend only (this one is "
                     f"'{jax.default_backend()}'); use conv_impl=xla or auto")
  ok, why = onednn_available()
  if not ok:
    raise ValueError(why)


# ---- the convolution with its custom VJP ---------------------------------------------------

def _attributes(config) -> dict:
  strides, pads, dilation = config
  return dict(strides=np.asarray(strides, np.int64),
              padding_lo=np.asarray([lo for lo, _ in pads], np.int64),
              padding_hi=np.asarray([hi for _, hi in pads], np.int64),
              dilation=np.asarray(dilation, np.int64))


def custom_call(target: str, shape, *operands, config):
  """One of the three custom calls ("fwd", "bwd_data", "bwd_weights") -> f32[shape];
  config = (strides, pads, dilation) as nhwc_conv_config returns it."""
  return jax.ffi.ffi_call(f"datadiet_onednn_conv_{target}",
                          jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="sequential")(*operands, **_attributes(config))


def _output_shape(x_shape, w_shape, config) -> tuple:
  strides, pads, dilation = config
  spatial = []
  for size, k, s, (lo, hi), d in zip(x_shape[1:3], w_shape[:2], strides, pads, dilation):
    spatial.append((size + lo + hi - ((k - 1) * d + 1)) // s + 1)
  return (x_shape[0], *spatial, w_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, config):
  return custom_call("fwd", _output_shape(x.shape, w.shape, config), x, w, config=config)


def _conv_fwd(x, w, config):
  return _conv(x, w, config), (x, w)


def _conv_bwd(config, residuals, dy):
  x, w = residuals
  dx = custom_call("bwd_data", x.shape, dy, w, config=config)
  dw = custom_call("bwd_weights", w.shape, x, dy, config=config)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def onednn_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` by oneDNN for float32 2-D NHWC/HWIO convolutions without
  groups or input dilation; anything else is passed to lax unchanged.

  lhs: f32[B, H, W, Cin], rhs: f32[KH, KW, Cin, Cout] -> f32[B, OH, OW, Cout].
  """
  config = None
  if (lhs.ndim == 4 and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
      and preferred_element_type in (None, jnp.float32)):
    config = nhwc_conv_config(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                              dimension_numbers, feature_group_count, batch_group_count)
  if config is None or any(n <= 0 for n in _output_shape(lhs.shape, rhs.shape, config)):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
  ensure_registered()
  return _conv(lhs, rhs, config)
