"""Benchmark: one ensemble train step over N members vs N single-run steps, same process.

For each N in --members and each strategy in --strategies ('vmap', 'map'; see
datadiet_jax/train/ensemble_loop.py) it times the jitted ensemble step (N stacked states,
N different synthetic u8 batches of --batch_size, augmentation and forgetting update on,
state donated as the loop does) against N calls of the jitted single-run step (the same
`make_train_step`, the per-run loop's way of training N runs one after another). Batches
are device-resident (no input pipeline), so this is the compute alone.

  ratio = sequential ms per N steps / ensemble ms per step   (> 1: the ensemble is faster)

Timing: --warmup untimed steps after compilation, then --steps timed steps in two halves in
ABBA order (sequential, ensemble, ensemble, sequential) so a drifting background load hits
both alike; the JSON records the load average before and after.

  python -m experiments.benchmarks.ensemble_step [--model simple_cnn] [--filters 32]
      [--members 1,4,8] [--strategies vmap,map] [--batch_size 128] [--steps 4]
      [--dtype float32] [--image_size 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from datadiet_jax.artifacts import write_json
from datadiet_jax.models import get_model
from datadiet_jax.provenance import package_versions
from datadiet_jax.train.ensemble import stack_trees
from datadiet_jax.train.ensemble_loop import make_ensemble_step
from datadiet_jax.train.forgetting import init_forget_stats, update_forget_stats
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import create_train_state
from datadiet_jax.train.step import make_train_step

NUM_EXAMPLES = 50_000  # forgetting statistics sized like CIFAR-10's train set


def _loadavg():
  return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _batches(num_members, batch_size, image_size, channels, seed):
  """N different synthetic batches: images u8[N, B, H, W, C], labels, example ids."""
  rng = np.random.default_rng(seed)
  shape = (num_members, batch_size, image_size, image_size, channels)
  ids = np.stack([rng.choice(NUM_EXAMPLES, batch_size, replace=False)
                  for _ in range(num_members)]).astype(np.int32)
  return {"images": rng.integers(0, 256, shape, dtype=np.uint8),
          "labels": rng.integers(0, 10, shape[:2]).astype(np.int32), "example_ids": ids}


def _time(run_steps, steps: int) -> float:
  start = time.perf_counter()
  run_steps(steps)
  return time.perf_counter() - start


def bench_members(model, num_members: int, strategies, batch_size: int, steps: int,
                  warmup: int, image_size: int = 32, channels: int = 3, seed: int = 0) -> dict:
  """{'sequential_ms', '<strategy>_ms', '<strategy>_ratio', ...} for one N."""
  tx = make_optimizer(OptimizerConfig(), 390)
  mean, std = np.full(channels, 120.0, np.float32), np.full(channels, 60.0, np.float32)
  train_step = make_train_step(model, tx, mean, std, augment=True)
  states = [create_train_state(model, tx, seed + m, 100 + seed + m,
                               (image_size, image_size, channels)) for m in range(num_members)]
  host = _batches(num_members, batch_size, image_size, channels, seed)
  batches = [jax.device_put({k: v[m] for k, v in host.items()}) for m in range(num_members)]
  stacked_batch = jax.device_put(host)

  single = jax.jit(train_step, donate_argnums=0)
  forget_update = jax.jit(update_forget_stats, donate_argnums=0)
  sequential = {"states": states, "forgets": [init_forget_stats(NUM_EXAMPLES)
                                              for _ in range(num_members)]}

  def run_sequential(n):
    for _ in range(n):
      for m in range(num_members):
        sequential["states"][m], metrics = single(sequential["states"][m], batches[m])
        sequential["forgets"][m] = forget_update(sequential["forgets"][m],
                                                 metrics["example_ids"], metrics["correct"])
    jax.block_until_ready(sequential)

  out = {"num_members": num_members}
  start = time.perf_counter()
  run_sequential(warmup)
  out["sequential_compile_and_warmup_s"] = round(time.perf_counter() - start, 3)
  runners = {}
  for strategy in strategies:
    step = jax.jit(make_ensemble_step(train_step, strategy), donate_argnums=(0, 1))
    holder = {"state": stack_trees(states), "forget": stack_trees(
        [init_forget_stats(NUM_EXAMPLES)] * num_members)}

    def run_ensemble(n, step=step, holder=holder):
      for _ in range(n):
        holder["state"], holder["forget"], _ = step(holder["state"], holder["forget"],
                                                    stacked_batch)
      jax.block_until_ready(holder)

    start = time.perf_counter()
    run_ensemble(warmup)
    out[f"{strategy}_compile_and_warmup_s"] = round(time.perf_counter() - start, 3)
    runners[strategy] = run_ensemble
  half = max(1, steps // 2)
  for strategy, run_ensemble in runners.items():
    seq = _time(run_sequential, half)
    ens = _time(run_ensemble, half) + _time(run_ensemble, half)
    seq += _time(run_sequential, half)
    # Each strategy is timed against its own interleaved sequential halves.
    out[f"{strategy}_sequential_ms_per_step"] = round(1e3 * seq / (2 * half), 2)  # N steps
    out[f"{strategy}_ms_per_step"] = round(1e3 * ens / (2 * half), 2)
    out[f"{strategy}_ratio"] = round(seq / ens, 4)
    out[f"{strategy}_member_steps_per_s"] = round(2 * half * num_members / ens, 3)
    out[f"{strategy}_sequential_member_steps_per_s"] = round(2 * half * num_members / seq, 3)
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="simple_cnn")
  parser.add_argument("--filters", type=int, default=32)
  parser.add_argument("--members", default="1,4,8")
  parser.add_argument("--strategies", default="vmap,map")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=4, help="timed steps (two halves)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--out", default=None, help="also write the JSON here")
  args = parser.parse_args(argv)
  try:
    members = [int(m) for m in args.members.split(",") if m.strip()]
  except ValueError:
    parser.error(f"--members must be comma-separated integers, got {args.members!r}")
  strategies = [s for s in args.strategies.split(",") if s.strip()]
  if any(s not in ("vmap", "map") for s in strategies) or not strategies:
    parser.error(f"--strategies must be from vmap,map, got {args.strategies!r}")
  if any(m < 1 for m in members) or args.batch_size < 1 or args.steps < 2 or args.warmup < 1:
    parser.error("--members, --batch_size, --warmup must be positive and --steps >= 2")
  model = get_model(args.model, 10, args.filters, dtype=args.dtype)
  out = {"benchmark": "ensemble_step: N members in one jitted step vs N sequential steps",
         "machine": {"backend": jax.default_backend(),
                     "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
                     "versions": {k: v for k, v in package_versions().items()
                                  if k in ("jax", "jaxlib", "flax", "optax")},
                     "loadavg_start": _loadavg()},
         "config": vars(args), "results": []}
  for n in members:
    print(f"[ensemble_step] {args.model}-{args.filters} {args.dtype} N={n}", file=sys.stderr,
          flush=True)
    out["results"].append(bench_members(model, n, strategies, args.batch_size, args.steps,
                                        args.warmup, args.image_size))
    print(f"[ensemble_step]   {out['results'][-1]}", file=sys.stderr, flush=True)
  out["machine"]["loadavg_end"] = _loadavg()
  if args.out:
    write_json(args.out, out)
  print(json.dumps(out, indent=2))
  return out


if __name__ == "__main__":
  main()
