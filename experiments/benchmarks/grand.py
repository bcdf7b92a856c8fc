"""Benchmark of per-example scores: how much GraNd costs next to a plain training step.

For SimpleCNN (the original's widths 32/64/128) and ResNet18-lowres (16 filters) on one
CIFAR-shaped random batch (default 128 x 32 x 32 x 3), prints JSON with ms per batch of

  fwd_bwd        value_and_grad of the batch-mean CE loss (eval mode): the baseline
  el2n           forward + softmax only
  grand_ghost    GraNd as datadiet_jax computes it by default: ghost norms from one
                 backward pass (scores/grand_ghost.py)
  grand_vmap     GraNd by vmap(grad(per-example loss)) (grand_method="vmap")
  grand_jacrev   the original code's jacrev of the B per-example losses (one timed batch:
                 it is ~B times the work; --skip_jacrev leaves it out)
  torch_fwd_bwd / torch_grand_vmap   torch.func vmap(grad) on the converted model
                 (third_party/torch_reference; skipped with a note if torch is missing)
  backpack_batch_l2   BackPACK's BatchL2Grad on the same converted weights: one backward
                 pass with the extension; GraNd = sqrt(sum over parameters of batch_l2)
  opacus_grad_sample  Opacus's GradSampleModule: per-example gradients materialized by
                 its hooks in one backward pass; GraNd = the norm over all of them
  opacus_ghost   Opacus's ghost clipping (GradSampleModuleFastGradientClipping): the
                 per-example norms from its hooks (get_norm_sample), without grad_sample
                 for the layers it has norm samplers for (Linear, Conv)
                 (the two peers need the benchmark-only extra: pip install -e .[bench];
                 --peers=none leaves them out, and a missing package is a note in the JSON)

and the ratio of each to fwd_bwd. Compilation and one warm-up call are excluded; the
reported time is the median of --repeats calls. It also checks that the GraNd values of
the methods agree on the batch (max relative difference).

  python -m experiments.benchmarks.grand [--batch_size 128] [--repeats 5] [--skip_jacrev]
      [--peers backpack,opacus | none] [--conv_impl xla | matmul | auto | onednn]

--conv_impl picks the JAX models' convolutions (models/conv.py; onednn = oneDNN custom
calls, the CPU's fastest; grand_vmap then runs them once per example, slowly).

The peers run on a copy of the converted module whose 'SAME'-padded convolutions
(SameConv2d: F.pad inside forward) become ZeroPad2d + a plain Conv2d, because both
libraries rebuild per-example gradients from the input their hooks see at each Conv2d;
for Opacus each BatchNorm2d also becomes its eval-mode affine map (see hookable_copy).
Their times are reported as ratios to torch_fwd_bwd (the plain torch fwd+bwd in the same
process), and their GraNd values are compared with datadiet_jax's (grand_vmap).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from datadiet_jax import scores as S
from datadiet_jax.models import get_model
from datadiet_jax.models.conv_config import CONV_IMPLS
from datadiet_jax.provenance import package_versions
from datadiet_jax.train.state import init_variables, num_params
from experiments.benchmarks.timing import median_ms

MODELS = {"simple_cnn_32_64_128": ("simple_cnn", 32), "resnet18_lowres_16": ("resnet18_lowres", 16)}


def _compiled(fn, *args):
  """(AOT-compiled fn, compile seconds)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def _max_rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def bench_jax(model, variables, x, y, repeats: int, skip_jacrev: bool) -> dict:
  apply_fn = S.eval_apply_fn(model)
  rest = {k: v for k, v in variables.items() if k != "params"}

  def mean_loss(p, x, y):
    return S.cross_entropy(apply_fn({**rest, "params": p}, x), y).mean()

  fns = {
      "fwd_bwd": (lambda v, x, y: jax.value_and_grad(mean_loss)(v["params"], x, y)),
      "el2n": (lambda v, x, y: S.el2n(apply_fn, v, x, y)),
      "grand_vmap": (lambda v, x, y: S.grand(apply_fn, v, x, y)),
      "grand_ghost": (lambda v, x, y: S.grand_ghost(apply_fn, v, x, y)),
  }
  if not skip_jacrev:
    fns["grand_jacrev"] = lambda v, x, y: S.grand_jacrev(apply_fn, v, x, y)
  ms, compile_s, values = {}, {}, {}
  for name, fn in fns.items():
    compiled, compile_s[name] = _compiled(fn, variables, x, y)
    run = lambda: jax.block_until_ready(compiled(variables, x, y))  # noqa: E731
    if name == "grand_jacrev":  # ~100x slower: one warm-up, one timed batch
      values[name] = run()
      start = time.perf_counter()
      run()
      ms[name] = 1e3 * (time.perf_counter() - start)
    else:
      values[name] = run()
      ms[name] = median_ms(run, repeats)
  return {"ms": ms, "compile_s": compile_s, "grand": values["grand_vmap"],
          "grand_ghost": values["grand_ghost"], "grand_jacrev": values.get("grand_jacrev")}


def bench_torch(variables, x, y, repeats: int) -> dict:
  try:
    import torch
  except ImportError:
    return {"note": "torch is not installed; pip install -e .[torch]"}
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if root not in sys.path:
    sys.path.insert(0, root)
  from third_party.torch_reference import SCORE_FNS, from_flax
  module, _ = from_flax(variables)
  tx = torch.from_numpy(np.array(x))
  ty = torch.from_numpy(np.array(y)).long()

  def fwd_bwd():
    module.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(module(tx), ty).backward()

  grand = lambda: SCORE_FNS["grand"](module, tx, ty)  # noqa: E731
  values = grand().detach().numpy()
  return {"ms": {"torch_fwd_bwd": median_ms(fwd_bwd, repeats),
                 "torch_grand_vmap": median_ms(grand, repeats)},
          "grand": values, "threads": torch.get_num_threads(), "version": torch.__version__}


PEERS = ("backpack", "opacus")


def hookable_copy(module, example, for_opacus: bool = False):
  """A copy of the torch reference `module` (eval mode) whose SameConv2d layers are
  ZeroPad2d + plain Conv2d (same weights), so per-layer hooks see the padded input.

  for_opacus: also (1) make each Conv2d's input contiguous (NCHW strides): the reference
  permutes its NHWC input, so every activation is channels_last in memory, and Opacus
  1.6's unfold2d (the Conv2d grad sampler and ghost-norm sampler) builds the patches
  with as_strided from strides it assumes contiguous, which silently yields wrong
  per-example weight gradients on channels_last input (their sum over the batch is not
  even the weight's gradient; biases, computed without unfold, stay right); and
  (2) replace each BatchNorm2d by its eval-mode affine map with the statistics as plain
  attributes (Opacus hooks only modules in train mode and refuses layers with buffers;
  it differentiates this module with its functorch fallback). example: one input batch."""
  import copy
  import torch
  from third_party.torch_reference.models import SameConv2d, same_padding

  class FrozenBatchNorm(torch.nn.Module):
    """BatchNorm2d's eval mode in any mode: (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, bn):
      super().__init__()
      self.weight = torch.nn.Parameter(bn.weight.detach().clone())
      self.bias = torch.nn.Parameter(bn.bias.detach().clone())
      self.mean = bn.running_mean.detach().clone()  # not buffers: plain attributes
      self.inv_std = torch.rsqrt(bn.running_var.detach() + bn.eps)

    def forward(self, x):
      shape = (1, -1, 1, 1)
      return ((x - self.mean.view(shape)) * self.inv_std.view(shape) * self.weight.view(shape)
              + self.bias.view(shape))

  class Contiguous(torch.nn.Module):
    """x.contiguous(): NCHW strides (a no-op on an already contiguous input)."""

    def forward(self, x):
      return x.contiguous()

  sizes = {}
  hooks = [m.register_forward_pre_hook(
      lambda mod, inputs, name=name: sizes.__setitem__(name, tuple(inputs[0].shape[-2:])))
           for name, m in module.named_modules() if isinstance(m, SameConv2d)]
  with torch.no_grad():
    module(example[:1])
  for hook in hooks:
    hook.remove()
  padded = copy.deepcopy(module)
  for name, (height, width) in sizes.items():
    parent_name, _, attr = name.rpartition(".")
    parent = padded.get_submodule(parent_name) if parent_name else padded
    old = getattr(parent, attr)
    top, bottom = same_padding(height, old.kernel_size[0], old.stride[0])
    left, right = same_padding(width, old.kernel_size[1], old.stride[1])
    conv = torch.nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size,
                           stride=old.stride, padding=0, bias=old.bias is not None,
                           dtype=old.weight.dtype)
    conv.load_state_dict(old.state_dict())
    layers = [torch.nn.ZeroPad2d((left, right, top, bottom))]
    layers += [Contiguous()] if for_opacus else []
    setattr(parent, attr, torch.nn.Sequential(*layers, conv))
  if for_opacus:
    for name, layer in list(padded.named_modules()):
      if isinstance(layer, torch.nn.BatchNorm2d):
        parent_name, _, attr = name.rpartition(".")
        parent = padded.get_submodule(parent_name) if parent_name else padded
        setattr(parent, attr, FrozenBatchNorm(layer))
  return padded.eval()


def peer_norm_fns(module, images, labels, peers) -> tuple[dict, dict]:
  """Per-example gradient norms of the summed cross-entropy by BackPACK / Opacus on a
  hookable copy of the torch reference `module` (its weights; BatchNorm as in eval mode).

  images: f32[B, H, W, C] torch tensor (NHWC, as the reference takes); labels: i64[B].
  Returns ({name: fn() -> f32[B] torch tensor}, {peer: note}) where a note replaces the
  functions of a peer that is not installed or refuses the model."""
  import torch
  fns, notes = {}, {}

  def sum_loss_backward(model):
    model.zero_grad(set_to_none=True)  # Opacus: also sets grad_sample to None
    torch.nn.functional.cross_entropy(model(images), labels, reduction="sum").backward()

  if "backpack" in peers:
    try:
      from backpack import backpack, extend
      from backpack.extensions import BatchL2Grad
    except ImportError:
      notes["backpack"] = "backpack is not installed; pip install -e .[bench]"
    else:
      model = hookable_copy(module, images)
      for layer in model.modules():  # first-order extensions need hooks on these only
        if type(layer) in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d):
          extend(layer)

      def backpack_norms():
        with backpack(BatchL2Grad()):  # sum of per-example losses: batch_l2 = |grad_n|^2
          sum_loss_backward(model)
        return torch.sqrt(sum(p.batch_l2 for p in model.parameters()))

      fns["backpack_batch_l2"] = backpack_norms
  if "opacus" in peers:
    try:
      from opacus import GradSampleModule
      from opacus.grad_sample import GradSampleModuleFastGradientClipping
    except ImportError:
      notes["opacus"] = "opacus is not installed; pip install -e .[bench]"
    else:
      # train mode: Opacus hooks only training modules (BatchNorm is frozen in the copy);
      # loss_reduction="sum" matches the summed loss (no rescaling of the backprops).
      try:
        grad_sample = GradSampleModule(hookable_copy(module, images, for_opacus=True),
                                       batch_first=True, loss_reduction="sum",
                                       strict=False).train()

        def opacus_norms():
          sum_loss_backward(grad_sample)
          squares = [p.grad_sample.reshape(len(images), -1).pow(2).sum(1)
                     for p in grad_sample.parameters() if p.requires_grad]
          return torch.sqrt(sum(squares))

        fns["opacus_grad_sample"] = opacus_norms
      except Exception as error:  # a layer Opacus refuses, reported as such
        notes["opacus_grad_sample"] = f"{type(error).__name__}: {error}"[:300]
      try:  # ghost clipping: norms from activations and output gradients, no grad_sample
        ghost = GradSampleModuleFastGradientClipping(
            hookable_copy(module, images, for_opacus=True), batch_first=True,
            loss_reduction="sum", strict=False, use_ghost_clipping=True).train()

        def opacus_ghost_norms():
          sum_loss_backward(ghost)
          return ghost.get_norm_sample()

        fns["opacus_ghost"] = opacus_ghost_norms
      except Exception as error:
        notes["opacus_ghost"] = f"{type(error).__name__}: {error}"[:300]
  return fns, notes


def bench_peers(variables, x, y, repeats: int, peers) -> dict:
  """BackPACK / Opacus per-example gradient norms on the converted weights: ms per batch,
  GraNd values f32[B], and notes for peers that could not run."""
  import torch
  from third_party.torch_reference import from_flax
  module, _ = from_flax(variables)
  tx = torch.from_numpy(np.array(x))
  ty = torch.from_numpy(np.array(y)).long()
  fns, notes = peer_norm_fns(module, tx, ty, peers)
  ms, values = {}, {}
  for name, fn in fns.items():
    try:
      values[name] = fn().detach().numpy()
      ms[name] = median_ms(fn, repeats)
    except Exception as error:  # a layer the peer does not support, reported as such
      notes[name] = f"{type(error).__name__}: {error}"[:300]
  return {"ms": ms, "grand": values, "notes": notes}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip_jacrev", action="store_true", help="leave out the original's "
                      "jacrev method (~100x slower than vmap(grad))")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--peers", default="none",
                      help="comma-separated peers to time next to torch: backpack,opacus "
                      "(benchmark-only extra .[bench]), or none (default: keeps it quick)")
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"comma-separated subset of {', '.join(MODELS)}")
  parser.add_argument("--conv_impl", default="xla", choices=CONV_IMPLS,
                      help="the JAX models' convolutions (models/conv.py); onednn = oneDNN "
                      "custom calls, the fastest on CPU (its extra must be installed)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.batch_size <= 0 or args.repeats <= 0:
    parser.error("--batch_size and --repeats must be positive")
  peers = () if args.peers == "none" else tuple(args.peers.split(","))
  if any(p not in PEERS for p in peers):
    parser.error(f"unknown --peers '{args.peers}'; choose from {', '.join(PEERS)} or none")
  rng = np.random.default_rng(args.seed)
  x = jnp.asarray(rng.normal(size=(args.batch_size, 32, 32, 3)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 10, size=args.batch_size).astype(np.int32))
  out = {"batch_size": args.batch_size, "input": "random normal f32[B, 32, 32, 3]",
         "repeats": args.repeats, "conv_impl": args.conv_impl,
         "timing": "median ms per batch after a warm-up call; compile excluded; "
         "grand_jacrev is one timed batch",
         "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
         "loadavg_start": [round(v, 2) for v in os.getloadavg()],
         "versions": {k: v for k, v in package_versions().items()
                      if k in ("jax", "jaxlib", "flax", "numpy")}, "models": {}}
  for key in args.models.split(","):
    if key not in MODELS:
      parser.error(f"unknown model '{key}'; choose from {', '.join(MODELS)}")
    name, width = MODELS[key]
    model = get_model(name, 10, width, conv_impl=args.conv_impl)
    variables = init_variables(model, args.seed, (32, 32, 3))
    result = bench_jax(model, variables, x, y, args.repeats, args.skip_jacrev)
    entry = {"num_params": num_params(variables["params"]), "ms_per_batch": dict(result["ms"]),
             "compile_s": {k: round(v, 2) for k, v in result["compile_s"].items()},
             "grand_max_rel_diff": {"ghost_vs_vmap": _max_rel(result["grand_ghost"],
                                                              result["grand"])}}
    if result["grand_jacrev"] is not None:
      entry["grand_max_rel_diff"]["jacrev_vs_vmap"] = _max_rel(result["grand_jacrev"],
                                                               result["grand"])
    if not args.skip_torch:
      torch_result = bench_torch(variables, x, y, args.repeats)
      if "note" in torch_result:
        entry["torch"] = torch_result["note"]
      else:
        entry["ms_per_batch"].update(torch_result["ms"])
        entry["torch_threads"] = torch_result["threads"]
        entry["grand_max_rel_diff"]["torch_vs_jax"] = _max_rel(torch_result["grand"],
                                                               result["grand"])
        if peers:
          peer = bench_peers(variables, x, y, args.repeats, peers)
          entry["ms_per_batch"].update(peer["ms"])
          for name, values in peer["grand"].items():
            entry["grand_max_rel_diff"][f"{name}_vs_jax"] = _max_rel(values, result["grand"])
          if peer["notes"]:
            entry["peer_notes"] = peer["notes"]
    base = entry["ms_per_batch"]["fwd_bwd"]
    entry["ratio_to_fwd_bwd"] = {k: round(v / base, 2) for k, v in entry["ms_per_batch"].items()}
    if "torch_grand_vmap" in entry["ms_per_batch"]:
      entry["ghost_vs_torch"] = {
          k: round(entry["ms_per_batch"]["grand_ghost"] / entry["ms_per_batch"][k], 2)
          for k in ("torch_fwd_bwd", "torch_grand_vmap")}
      torch_base = entry["ms_per_batch"]["torch_fwd_bwd"]
      entry["ratio_to_torch_fwd_bwd"] = {
          k: round(v / torch_base, 2) for k, v in entry["ms_per_batch"].items()
          if k.startswith(("torch_", "backpack_", "opacus_"))}
    entry["ms_per_batch"] = {k: round(v, 2) for k, v in entry["ms_per_batch"].items()}
    out["models"][key] = entry
    print(f"{key}: {json.dumps(entry)}", file=sys.stderr, flush=True)
  out["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
  print(json.dumps(out, indent=2))
  return out


if __name__ == "__main__":
  main()
