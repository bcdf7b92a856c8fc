"""Benchmark of the training step: synthetic device-resident batches vs the real data pipeline.

For ResNet18-lowres at each width of --filters (default 16 and 64) and, optionally, the
original SimpleCNN (32/64/128), on CIFAR-10 (32x32x3, --batch_size 128), it measures train
steps per second of the jitted `make_train_step` step (on-device normalization and
pad/crop/flip augmentation included; jitted with `donate_argnums=0` as `train_loop` does)
fed in three ways:

  synthetic  one random u8 batch put on the device once with jax.device_put and reused
             every step: no host work but the dispatch, so this is the step's own speed.
  real       the decoded CIFAR-10 train set in host memory (u8), `BatchSchedule.batch_ids`
             per step, the host-side numpy gather `train_images[ids]`, and the same jitted
             step called on the numpy batch with async dispatch, exactly as the body of
             `train_loop` (the host prepares step t+1 while step t runs).
  real_loop  `real` plus the rest of `train_loop`'s per-step body: the jitted forgetting
             update and the running loss/accuracy sums (--no_loop_extras skips it). It is
             timed against its own synthetic run, `synthetic_ref`, giving `loop_ratio`.

Compilation and --warmup steps of each feed are excluded. Each feed runs --steps timed
steps in two halves in ABBA order (synthetic, real, real, synthetic; real_loop likewise
against synthetic) so a slow drift of the background load affects both alike; each half
dispatches its steps back to back and blocks only at its end (block_until_ready).

How to read `pipeline_ratio` = real steps/s / synthetic steps/s: 1.0 means the host-side
batch preparation (gather + host->device copy of the batch) is fully hidden behind the
device compute; the target is >= 0.95. Below that, compare `host.gather_ms` (the gather
alone, measured separately over many steps), `host.device_put_ms` (one batch's copy to the
device, blocked) and `real.host_ms_per_step` (Python time per loop iteration, gather +
dispatch) with the step time `synthetic.ms_per_step`: if the host time per step is small
next to the step time but the ratio is still low, the copy/gather is not overlapping with
compute (e.g. a synchronous transfer, or the dispatch blocking on the previous step);
if the host time is comparable to the step time, the host itself is the bottleneck.
`host_ms_per_step` also contains backpressure: the CPU client keeps at most 32 dispatched
computations in flight and then blocks the dispatching thread until one finishes, so once
the host is that far ahead its per-iteration time equals the step time. `synthetic` and
`real` enqueue one computation per step (they block only after 32 steps), `real_loop`
six (the step, the forgetting update and four tiny sums), so its host time is the step
time after ~5 steps; that is the host waiting ahead of the device, not lost overlap.
`dispatch_ms_per_step` is the jitted call alone (for `real` it includes the numpy batch's
host->device copy, which the call makes before returning).

On a contended CPU (the JSON records cpu_count and the load average before and after) the
device compute and the host work share cores, so a ratio below 1 can also mean the
gather merely took CPU time from the step, and the load drifts: ratios a few percent
(under heavy load, more: compare `halves_steps_per_s`) from 1 are noise.

  python -m experiments.benchmarks.train_step [--filters 16,64] [--batch_size 128]
      [--steps 0 (auto: 30 for <= 32 filters / SimpleCNN, 10 otherwise)] [--warmup 2]
      [--data_dir <repo>/../shared/data/cifar10-jpeg.tar.gz] [--cache_dir ...]
      [--simple_cnn_filters 32 (0: skip)] [--no_loop_extras] [--ensemble_members 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from datadiet_jax.data.batching import BatchSchedule
from datadiet_jax.data.sources import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.provenance import package_versions
from datadiet_jax.train.forgetting import init_forget_stats, update_forget_stats
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import create_train_state, num_params
from datadiet_jax.train.step import make_train_step
from experiments.benchmarks.timing import median_ms

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA = os.path.join(os.path.dirname(_REPO), "shared", "data", "cifar10-jpeg.tar.gz")


def _info(msg: str) -> None:
  print(f"[train_step bench] {msg}", file=sys.stderr, flush=True)


def _loadavg():
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


_COMPILES = {"count": 0}


def _count_compiles(event: str, duration: float, **_) -> None:
  del duration
  if event == "/jax/core/compile/backend_compile_duration":
    _COMPILES["count"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def _stats_ms(seconds: list[float]) -> dict:
  ms = sorted(1e3 * s for s in seconds)
  return {"mean": round(statistics.fmean(ms), 4), "median": round(statistics.median(ms), 4),
          "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 4), "n": len(ms)}


class _Runner:
  """One model's jitted step, its state, and the feeds that drive it."""

  def __init__(self, model, dataset, schedule: BatchSchedule, batch_size: int, seed: int):
    self.dataset, self.schedule = dataset, schedule
    tx = make_optimizer(OptimizerConfig(), schedule.steps_per_epoch)
    self.state = create_train_state(model, tx, seed, seed, dataset.image_shape)
    self.num_params = num_params(self.state.params)
    # As train_loop's _compiled: the state is donated.
    self.step_fn = jax.jit(make_train_step(model, tx, dataset.mean, dataset.std, augment=True),
                           donate_argnums=0)
    self.update_forget = jax.jit(update_forget_stats, donate_argnums=0)
    self.forget = init_forget_stats(dataset.num_train)
    rng = np.random.default_rng(seed)
    # Uncommitted device arrays (no explicit device), like the numpy batches of the real
    # feed, so both feeds hit the same compiled executable.
    self.synthetic = jax.device_put({
        "images": rng.integers(0, 256, (batch_size, *dataset.image_shape), dtype=np.uint8),
        "labels": rng.integers(0, dataset.num_classes, batch_size).astype(np.int32),
        "example_ids": np.arange(batch_size, dtype=np.int32)})
    jax.block_until_ready(self.synthetic)
    self.next_step = 1  # the schedule step the real feed uses next (1-indexed)

  def first_call(self) -> float:
    """Compiles and runs one step (synthetic batch); returns its blocked wall time."""
    start = time.perf_counter()
    self.state, metrics = self.step_fn(self.state, self.synthetic)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start

  def run_synthetic(self, steps: int) -> dict:
    state, batch, step_fn = self.state, self.synthetic, self.step_fn
    dispatch = []
    start = time.perf_counter()
    for _ in range(steps):
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch)
      dispatch.append(time.perf_counter() - t0)
    jax.block_until_ready((state, metrics))
    total = time.perf_counter() - start
    self.state = state
    return {"seconds": total, "steps": steps, "dispatch": dispatch, "host": dispatch}

  def run_real(self, steps: int, loop_extras: bool) -> dict:
    """The body of train_loop's step loop (gather -> jitted step), async dispatch."""
    state, step_fn, schedule = self.state, self.step_fn, self.schedule
    images, labels = self.dataset.train_images, self.dataset.train_labels
    forget, update_forget = self.forget, self.update_forget
    loss_sum, correct_sum, count = jnp.float32(0.0), jnp.float32(0.0), 0
    dispatch, host = [], []
    start = time.perf_counter()
    for step in range(self.next_step, self.next_step + steps):
      t0 = time.perf_counter()
      ids = schedule.batch_ids(step)
      batch = {"images": images[ids], "labels": labels[ids], "example_ids": ids}
      t1 = time.perf_counter()
      state, metrics = step_fn(state, batch)
      t2 = time.perf_counter()
      if loop_extras:
        forget = update_forget(forget, metrics["example_ids"], metrics["correct"])
        loss_sum = loss_sum + metrics["loss"] * len(ids)
        correct_sum = correct_sum + metrics["accuracy"] * len(ids)
        count += len(ids)
      dispatch.append(t2 - t1)
      host.append(time.perf_counter() - t0)
    jax.block_until_ready((state, metrics, forget, loss_sum, correct_sum))
    total = time.perf_counter() - start
    self.state, self.forget = state, forget
    self.next_step += steps
    return {"seconds": total, "steps": steps, "dispatch": dispatch, "host": host}


def _summary(runs: list[dict]) -> dict:
  seconds = sum(r["seconds"] for r in runs)
  steps = sum(r["steps"] for r in runs)
  return {"steps": steps, "seconds": round(seconds, 3),
          "steps_per_s": round(steps / seconds, 4), "ms_per_step": round(1e3 * seconds / steps, 2),
          "halves_steps_per_s": [round(r["steps"] / r["seconds"], 4) for r in runs],
          "dispatch_ms_per_step": _stats_ms([d for r in runs for d in r["dispatch"]]),
          "host_ms_per_step": _stats_ms([h for r in runs for h in r["host"]])}


def bench_model(name: str, model, dataset, batch_size: int, steps: int, warmup: int,
                loop_extras: bool, seed: int) -> dict:
  schedule = BatchSchedule(np.arange(dataset.num_train, dtype=np.int32), batch_size, seed)
  runner = _Runner(model, dataset, schedule, batch_size, seed)
  _info(f"{name}: {runner.num_params} params; compiling")
  first_s = runner.first_call()
  # Warm up both feeds; no XLA compile may happen while timing (counted below).
  runner.run_synthetic(warmup)
  runner.run_real(warmup, loop_extras)
  compiles_before = _COMPILES["count"]
  _info(f"{name}: first call (compile + 1 step) {first_s:.1f}s; timing {steps} steps per feed")
  first_half, second_half = steps // 2, steps - steps // 2
  load_start = _loadavg()
  feeds = {"synthetic": [], "real": []}
  # ABBA: synthetic, real, real, synthetic.
  feeds["synthetic"].append(runner.run_synthetic(first_half))
  feeds["real"].append(runner.run_real(first_half, False))
  feeds["real"].append(runner.run_real(second_half, False))
  feeds["synthetic"].append(runner.run_synthetic(second_half))
  if loop_extras:
    feeds["synthetic_ref"] = [runner.run_synthetic(first_half)]
    feeds["real_loop"] = [runner.run_real(first_half, True), runner.run_real(second_half, True)]
    feeds["synthetic_ref"].append(runner.run_synthetic(second_half))
  entry = {"num_params": runner.num_params, "batch_size": batch_size,
           "first_call_s": round(first_s, 2), "warmup_steps": warmup,
           "xla_compiles_during_timing": _COMPILES["count"] - compiles_before,
           "loadavg_during": [load_start, _loadavg()]}
  for feed, runs in feeds.items():
    entry[feed] = _summary(runs)
  entry["pipeline_ratio"] = round(entry["real"]["steps_per_s"] /
                                  entry["synthetic"]["steps_per_s"], 4)
  if loop_extras:
    entry["loop_ratio"] = round(entry["real_loop"]["steps_per_s"] /
                                entry["synthetic_ref"]["steps_per_s"], 4)
  _info(f"{name}: synthetic {entry['synthetic']['steps_per_s']:.3f} steps/s, real "
        f"{entry['real']['steps_per_s']:.3f} steps/s, ratio {entry['pipeline_ratio']:.3f}"
        + (f", loop ratio {entry['loop_ratio']:.3f}" if loop_extras else ""))
  return entry


def bench_host(dataset, batch_size: int, seed: int, num_steps: int = 390) -> dict:
  """The host side alone: batch ids, numpy gather, and the blocked host->device copy."""
  schedule = BatchSchedule(np.arange(dataset.num_train, dtype=np.int32), batch_size, seed)
  images, labels = dataset.train_images, dataset.train_labels
  schedule.batch_ids(1)  # the epoch's permutation is computed once and cached
  ids_t, gather_t, put_t = [], [], []
  for step in range(1, num_steps + 1):
    t0 = time.perf_counter()
    ids = schedule.batch_ids(step)
    t1 = time.perf_counter()
    batch = {"images": images[ids], "labels": labels[ids], "example_ids": ids}
    t2 = time.perf_counter()
    ids_t.append(t1 - t0)
    gather_t.append(t2 - t1)
    if step <= 100:
      t3 = time.perf_counter()
      jax.block_until_ready(jax.device_put(batch))
      put_t.append(time.perf_counter() - t3)
  return {"batch_bytes": int(batch_size * np.prod(dataset.image_shape) + 8 * batch_size),
          "batch_ids_ms": _stats_ms(ids_t), "gather_ms": _stats_ms(gather_t),
          "device_put_ms": _stats_ms(put_t[1:]),
          "epoch_permutation_ms": round(_time_permutation(schedule), 3)}


def _time_permutation(schedule: BatchSchedule) -> float:
  """ms to draw a fresh epoch permutation (once per epoch in the real loop; uncached epoch)."""
  start = time.perf_counter()
  schedule.epoch_order(10_000)
  return 1e3 * (time.perf_counter() - start)


def bench_vs_torch(batch_size: int, repeats: int, seed: int) -> dict:
  """One SGD-momentum training step (train-mode BN, batch-mean CE, fwd + bwd + update) on a
  fixed normalized random batch: JAX with XLA's conv weight gradient ("xla"), JAX with the
  im2col-matmul weight gradient ("matmul", models/conv.py), JAX with oneDNN's convolutions
  ("onednn", models/onednn_conv.py; when its extra is installed), and the PyTorch reference
  model (third_party/torch_reference) with the same weights, in this process. Median ms per
  step.
  """
  import optax
  import torch
  if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
  from third_party.torch_reference import from_flax

  from datadiet_jax.models.onednn_conv import onednn_available
  onednn, why_not = onednn_available()
  impls = ("xla", "matmul") + (("onednn",) if onednn else ())
  if not onednn:
    _info(f"conv_impl=onednn skipped: {why_not}")
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 10, batch_size).astype(np.int32)
  tx = optax.sgd(0.01, momentum=0.9)
  out = {}
  for key, name, width in (("simple_cnn_32_64_128", "simple_cnn", 32),
                           ("resnet18_lowres_16", "resnet18_lowres", 16)):
    entry, grads = {}, {}
    for impl in impls:
      model = get_model(name, 10, width).clone(conv_impl=impl)
      variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))
      params, stats = variables["params"], variables.get("batch_stats", {})

      def loss_fn(params, stats, x, y, model=model):
        logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
        return ce, new.get("batch_stats", {})

      @jax.jit
      def step(params, stats, opt_state, x, y, loss_fn=loss_fn):
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss, g

      state = [params, stats, tx.init(params)]
      xd, yd = jnp.asarray(x), jnp.asarray(y)

      def run(step=step, state=state, xd=xd, yd=yd):
        state[0], state[1], state[2], loss, g = step(*state, xd, yd)
        jax.block_until_ready(loss)
        return g

      grads[impl] = step(params, stats, tx.init(params), xd, yd)[4]
      entry[f"jax_{impl}_ms"] = round(median_ms(run, repeats), 2)
    module, _ = from_flax(variables)
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    tx_, ty_ = torch.from_numpy(x), torch.from_numpy(y).long()  # NHWC, as the module takes it

    def torch_step():
      opt.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(module(tx_), ty_).backward()
      opt.step()

    entry["torch_ms"] = round(median_ms(torch_step, repeats), 2)
    for impl in impls:
      entry[f"ratio_jax_{impl}_to_torch"] = round(entry[f"jax_{impl}_ms"] / entry["torch_ms"], 3)
    for impl in impls[1:]:
      entry[f"grad_max_rel_diff_{impl}_vs_xla"] = max(
          float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
          for a, b in zip(jax.tree_util.tree_leaves(grads[impl]),
                          jax.tree_util.tree_leaves(grads["xla"])))
    _info(f"{key}: {entry}")
    out[key] = entry
  return {"benchmark": "train step vs PyTorch (same batch, same weights, same process)",
          "batch_size": batch_size, "repeats": repeats, "torch": torch.__version__,
          "torch_threads": torch.get_num_threads(), "backend": jax.default_backend(),
          "loadavg_start": _loadavg(), "models": out, "loadavg_end": _loadavg()}


def _auto_steps(requested: int, filters: int) -> int:
  if requested > 0:
    return requested
  return 30 if filters <= 32 else 10


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--filters", default="16,64",
                      help="comma-separated ResNet18-lowres widths (num_filters)")
  parser.add_argument("--simple_cnn_filters", type=int, default=32,
                      help="SimpleCNN base width (the original: 32 -> 32/64/128); 0 skips it")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=0,
                      help="timed steps per feed; 0 = auto (30 for <= 32 filters, else 10)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per feed")
  parser.add_argument("--data_dir", default=DEFAULT_DATA,
                      help="the CIFAR-10 image folder archive (image_folder source)")
  parser.add_argument("--cache_dir", default=None, help="decoded-array cache (default: "
                      "$DATADIET_CACHE or ~/.cache/datadiet_jax)")
  parser.add_argument("--no_loop_extras", dest="loop_extras", action="store_false",
                      help="skip the real_loop feed (forgetting update + running sums)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--vs_torch", action="store_true",
                      help="only time one training step of SimpleCNN and ResNet18-16 with "
                      "XLA's and the matmul conv weight gradient against PyTorch's")
  parser.add_argument("--repeats", type=int, default=10, help="timed steps for --vs_torch")
  parser.add_argument("--ensemble_members", default="",
                      help="e.g. 1,4,8: also time N-member ensemble steps (vmap and map) vs N "
                      "sequential steps per model (benchmarks/ensemble_step.py); '' skips")
  args = parser.parse_args(argv)
  if args.vs_torch:
    out = bench_vs_torch(args.batch_size, args.repeats, args.seed)
    print(json.dumps(out, indent=2))
    return out
  if args.batch_size <= 0 or args.warmup < 1 or args.steps == 1 or args.steps < 0:
    parser.error("--batch_size must be positive, --steps 0 (auto) or >= 2, --warmup >= 1")
  try:
    widths = [int(f) for f in args.filters.split(",") if f.strip()]
  except ValueError:
    parser.error(f"--filters must be comma-separated integers, got {args.filters!r}")
  if any(w <= 0 for w in widths) or args.simple_cnn_filters < 0:
    parser.error("filter counts must be positive")

  versions = package_versions()
  out = {
      "benchmark": "train_step: synthetic device-resident batch vs real-data pipeline",
      "machine": {
          "jax": jax.__version__,
          "versions": {k: v for k, v in versions.items()
                       if k in ("jax", "jaxlib", "flax", "optax", "numpy")},
          "python": platform.python_version(), "platform": platform.platform(),
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "cpu_count": os.cpu_count(),
          "sched_affinity": (len(os.sched_getaffinity(0))
                             if hasattr(os, "sched_getaffinity") else None),
          "cpu_async_dispatch": jax.config.values.get("jax_cpu_enable_async_dispatch"),
          "xla_flags": os.environ.get("XLA_FLAGS"),
          "loadavg_start": _loadavg(),
      },
      "config": {"batch_size": args.batch_size, "warmup": args.warmup,
                 "steps": args.steps or "auto", "order": "ABBA halves",
                 "augment": True, "donate_state": True, "data_dir": args.data_dir},
  }
  _info(f"loading {args.data_dir}")
  start = time.perf_counter()
  dataset = load_dataset("image_folder", data_dir=args.data_dir, cache_dir=args.cache_dir)
  out["data"] = {"load_s": round(time.perf_counter() - start, 2),
                 "num_train": dataset.num_train, "image_shape": list(dataset.image_shape),
                 "dtype": str(dataset.train_images.dtype),
                 "train_images_mb": round(dataset.train_images.nbytes / 2**20, 1)}
  _info(f"loaded {dataset.num_train} train images in {out['data']['load_s']}s")
  out["host"] = bench_host(dataset, args.batch_size, args.seed)
  _info(f"host: gather {out['host']['gather_ms']['median']:.3f} ms, device_put "
        f"{out['host']['device_put_ms']['median']:.3f} ms per batch")

  configs = [(f"resnet18_lowres_{w}", "resnet18_lowres", w) for w in widths]
  if args.simple_cnn_filters:
    f = args.simple_cnn_filters
    configs.append((f"simple_cnn_{f}_{2 * f}_{4 * f}", "simple_cnn", f))
  out["models"] = {}
  for key, name, width in configs:
    model = get_model(name, dataset.num_classes, width)
    steps = _auto_steps(args.steps, width)
    entry = bench_model(key, model, dataset, args.batch_size, steps, args.warmup,
                        args.loop_extras, args.seed)
    entry["gather_fraction_of_step"] = round(
        out["host"]["gather_ms"]["median"] / entry["synthetic"]["ms_per_step"], 6)
    out["models"][key] = entry
    if args.ensemble_members:
      from experiments.benchmarks.ensemble_step import bench_members
      entry["ensemble"] = [bench_members(model, int(n), ("vmap", "map"), args.batch_size,
                                         max(2, steps // 2), args.warmup, seed=args.seed)
                           for n in args.ensemble_members.split(",")]
  out["machine"]["loadavg_end"] = _loadavg()
  out["summary"] = {k: {"synthetic_steps_per_s": v["synthetic"]["steps_per_s"],
                        "real_steps_per_s": v["real"]["steps_per_s"],
                        "pipeline_ratio": v["pipeline_ratio"],
                        **({"loop_ratio": v["loop_ratio"]} if "loop_ratio" in v else {})}
                    for k, v in out["models"].items()}
  print(json.dumps(out, indent=2))
  return out


if __name__ == "__main__":
  main()
