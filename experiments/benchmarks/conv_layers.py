"""Per-layer convolution times, JAX (XLA:CPU) against PyTorch, for the layers of a model.

Where does a JAX training step lose to PyTorch's on this CPU? For every 3x3 convolution of
SimpleCNN 32/64/128 at batch --batch_size (NHWC, "SAME" padding, the strides the model
uses), in this one process, median ms of --repeats calls of:

  jax_fwd            XLA's forward convolution
  jax_dgrad          XLA's input gradient (the VJP of the convolution w.r.t. its input)
  jax_wgrad_xla      XLA's weight gradient (the VJP w.r.t. the kernel)
  jax_wgrad_matmul   models/conv.py's weight gradient: im2col patches formed chunk by chunk
                     inside a lax.scan and contracted by matmuls (conv_impl="matmul")
  onednn_fwd, onednn_dgrad, onednn_wgrad
                     models/onednn_conv.py's oneDNN custom calls (conv_impl="onednn"; when
                     its extra is installed), checked against XLA's (`onednn_max_rel_diff`)
  torch_fwd          torch.nn.functional.conv2d, channels_last input, no autograd
  torch_fwd_bwd      conv2d forward + backward to input and weight (autograd)
  torch_fwd_wgrad    conv2d forward + backward to the weight only

and the FLOP rate of each (2 * B * output positions * 9 * Cin * Cout per pass). Also the
sums over the layers (`total`), with `jax_fwd_dgrad_wgrad_{xla,matmul}` = fwd + dgrad +
wgrad and `onednn_fwd_dgrad_wgrad` against `torch_fwd_bwd`. The weight gradients are
checked against each other (`wgrad_max_rel_diff`). One JSON on stdout.

  python -m experiments.benchmarks.conv_layers [--batch_size 128] [--repeats 9]
      [--patch_chunk_bytes 2097152] [--no_torch]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from datadiet_jax.models import conv as conv_module
from datadiet_jax.models.conv_config import nhwc_conv_config
from experiments.benchmarks.timing import median_ms

NHWC = ("NHWC", "HWIO", "NHWC")
# (input side, Cin, Cout, stride) of SimpleCNN 32/64/128's convolutions on 32x32x3 images.
SIMPLE_CNN_LAYERS = ((32, 3, 32, 1), (32, 32, 32, 2), (16, 32, 64, 1), (16, 64, 64, 2),
                     (8, 64, 128, 1), (8, 128, 128, 2))


def _median_ms(fn, repeats: int) -> float:
  return round(median_ms(fn, repeats), 2)


def _layer_config(x, w, stride: int) -> tuple:
  """(strides, pads, dilation) of the layer's "SAME" convolution (models/conv_config.py)."""
  return nhwc_conv_config(x, w, (stride, stride), "SAME", dimension_numbers=NHWC)


def _jax_layer(x, w, dy, stride: int, repeats: int,
               chunk_bytes: int) -> tuple[dict, np.ndarray, np.ndarray]:
  def conv(x, w):
    return lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=NHWC)

  config = (*_layer_config(x, w, stride), None)  # + precision
  fwd = jax.jit(conv)
  dgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  wgrad_xla = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  wgrad_matmul = jax.jit(lambda x, dy: conv_module.weight_gradient(x, dy, w.shape, config,
                                                                      chunk_bytes))
  times = {
      "jax_fwd": _median_ms(lambda: jax.block_until_ready(fwd(x, w)), repeats),
      "jax_dgrad": _median_ms(lambda: jax.block_until_ready(dgrad(x, w, dy)), repeats),
      "jax_wgrad_xla": _median_ms(lambda: jax.block_until_ready(wgrad_xla(x, w, dy)), repeats),
      "jax_wgrad_matmul": _median_ms(lambda: jax.block_until_ready(wgrad_matmul(x, dy)),
                                     repeats),
  }
  return times, np.asarray(wgrad_xla(x, w, dy)), np.asarray(wgrad_matmul(x, dy))


def _onednn_layer(x, w, dy, stride: int, repeats: int) -> dict:
  """The three oneDNN custom calls of models/onednn_conv.py, timed and checked against XLA."""
  from datadiet_jax.models.onednn_conv import custom_call
  config = _layer_config(x, w, stride)
  calls = {"onednn_fwd": (jax.jit(lambda x, w: custom_call("fwd", dy.shape, x, w,
                                                           config=config)), (x, w)),
           "onednn_dgrad": (jax.jit(lambda dy, w: custom_call("bwd_data", x.shape, dy, w,
                                                              config=config)), (dy, w)),
           "onednn_wgrad": (jax.jit(lambda x, dy: custom_call("bwd_weights", w.shape, x, dy,
                                                              config=config)), (x, dy))}
  conv = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                               dimension_numbers=NHWC)
  y, vjp = jax.vjp(conv, x, w)
  expected = {"onednn_fwd": y, "onednn_dgrad": vjp(dy)[0], "onednn_wgrad": vjp(dy)[1]}
  times, diffs = {}, {}
  for name, (fn, args) in calls.items():
    times[name] = _median_ms(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)),
                             repeats)
    got, want = np.asarray(fn(*args)), np.asarray(expected[name])
    diffs[name] = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
  return {**times, "onednn_max_rel_diff": diffs}


def _torch_layer(x, w, dy, stride: int, repeats: int) -> dict:
  import torch
  tx = torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW
  tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
  tdy = torch.from_numpy(dy).permute(0, 3, 1, 2)
  pad = (w.shape[0] - 1) // 2
  # PyTorch's symmetric padding equals "SAME" for stride 1; for stride 2 on even sides
  # "SAME" pads (0, 1) and torch (1, 1): same FLOPs (one output row/column differs).
  conv = lambda x: torch.nn.functional.conv2d(x, tw, stride=stride, padding=pad)
  txg = tx.detach().clone().requires_grad_(True)
  with torch.no_grad():
    fwd_ms = _median_ms(lambda: conv(tx), repeats)
  assert tuple(conv(tx).shape) == tuple(tdy.shape), (conv(tx).shape, tdy.shape)
  return {
      "torch_fwd": fwd_ms,
      "torch_fwd_bwd": _median_ms(lambda: torch.autograd.grad(conv(txg), (txg, tw), tdy),
                                  repeats),
      "torch_fwd_wgrad": _median_ms(lambda: torch.autograd.grad(conv(tx), (tw,), tdy),
                                    repeats),
  }


def bench_conv_layers(batch_size: int, repeats: int, seed: int, torch_peer: bool = True,
                      chunk_bytes: int = conv_module.PATCH_CHUNK_BYTES) -> dict:
  from datadiet_jax.models.onednn_conv import onednn_available
  onednn, why_not = onednn_available()
  if not onednn:
    print(f"[conv_layers bench] oneDNN skipped: {why_not}", file=sys.stderr, flush=True)
  rng = np.random.default_rng(seed)
  layers, total = [], {}
  for side, cin, cout, stride in SIMPLE_CNN_LAYERS:
    x = rng.normal(size=(batch_size, side, side, cin)).astype(np.float32)
    w = (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    out_side = -(-side // stride)
    dy = rng.normal(size=(batch_size, out_side, out_side, cout)).astype(np.float32)
    flops = 2 * batch_size * out_side * out_side * 9 * cin * cout
    times, wg_xla, wg_matmul = _jax_layer(jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy),
                                          stride, repeats, chunk_bytes)
    diffs = {}
    if onednn:
      times.update(_onednn_layer(jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy), stride,
                                 repeats))
      diffs = times.pop("onednn_max_rel_diff")
    if torch_peer:
      times.update(_torch_layer(x, w, dy, stride, repeats))
    entry = {"layer": f"{side}x{side}x{cin}->{cout} stride {stride}", "gflop_per_pass":
             round(flops / 1e9, 3), **times,
             "gflops_per_s": {k: round(flops / (v / 1e3) / 1e9, 1) for k, v in times.items()
                              if k in ("jax_fwd", "jax_dgrad", "jax_wgrad_xla",
                                       "jax_wgrad_matmul", "torch_fwd", "onednn_fwd",
                                       "onednn_dgrad", "onednn_wgrad")},
             "wgrad_max_rel_diff": float(np.max(np.abs(wg_matmul - wg_xla))
                                         / max(np.max(np.abs(wg_xla)), 1e-30)),
             **({"onednn_max_rel_diff": diffs} if diffs else {})}
    print(f"[conv_layers bench] {json.dumps(entry)}", file=sys.stderr, flush=True)
    layers.append(entry)
    for k, v in times.items():
      total[k] = round(total.get(k, 0.0) + v, 2)
  for impl in ("xla", "matmul"):
    total[f"jax_fwd_dgrad_wgrad_{impl}"] = round(
        total["jax_fwd"] + total["jax_dgrad"] + total[f"jax_wgrad_{impl}"], 2)
    if torch_peer:
      total[f"ratio_{impl}_to_torch_fwd_bwd"] = round(
          total[f"jax_fwd_dgrad_wgrad_{impl}"] / total["torch_fwd_bwd"], 3)
  if onednn:
    total["onednn_fwd_dgrad_wgrad"] = round(
        total["onednn_fwd"] + total["onednn_dgrad"] + total["onednn_wgrad"], 2)
    if torch_peer:
      total["ratio_onednn_to_torch_fwd_bwd"] = round(
          total["onednn_fwd_dgrad_wgrad"] / total["torch_fwd_bwd"], 3)
  if torch_peer:
    total["ratio_jax_fwd_to_torch_fwd"] = round(total["jax_fwd"] / total["torch_fwd"], 3)
  result = {"benchmark": "per-layer conv times, SimpleCNN 32/64/128, JAX vs PyTorch",
            "batch_size": batch_size, "repeats": repeats, "backend": jax.default_backend(),
            "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "patch_chunk_bytes": chunk_bytes,
            "loadavg": [round(v, 2) for v in os.getloadavg()], "layers": layers,
            "total": total}
  if torch_peer:
    import torch
    result.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  return result


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no_torch", dest="torch_peer", action="store_false",
                      help="skip the PyTorch columns (torch not installed)")
  parser.add_argument("--patch_chunk_bytes", type=int, default=conv_module.PATCH_CHUNK_BYTES,
                      help="bytes of im2col patches per chunk of the matmul weight gradient")
  args = parser.parse_args(argv)
  if args.batch_size <= 0 or args.repeats <= 0 or args.patch_chunk_bytes <= 0:
    parser.error("--batch_size, --repeats and --patch_chunk_bytes must be positive")
  out = bench_conv_layers(args.batch_size, args.repeats, args.seed, args.torch_peer,
                          args.patch_chunk_bytes)
  print(json.dumps(out, indent=2))
  return out


if __name__ == "__main__":
  main()
