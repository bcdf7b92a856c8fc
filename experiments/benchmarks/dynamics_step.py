"""Benchmark: the cost of --track_dynamics, the train step with and without the accumulators.

Times the training loop's own fused step (train/loop.py `_train_and_forget_step`: the jitted
train step and the update of what it tracks, one program, carry donated) on the CPU-scale
CIFAR-10 Figure-1 setting: SimpleCNN, synthetic u8 32x32x3 batches of --batch_size drawn from
--num_examples ids, augmentation on, against two carries:

  forgetting   ForgetStats only (every run of the protocol tracks it)
  dynamics     train/dynamics.Tracked: forgetting + AUM, Dyn-Unc, DUAL, TDDS (--names), windows
               of --window visits (TDDS keeps f32[N, C])

  ratio = dynamics ms per step / forgetting ms per step   (1.0: free)

Timing: --warmup untimed steps after compilation, then --steps timed steps in two halves in
ABBA order (forgetting, dynamics, dynamics, forgetting) so a drifting background load hits
both alike; the JSON records the load average before and after.

  python -m experiments.benchmarks.dynamics_step [--filters 32] [--batch_size 128]
      [--num_examples 10000] [--window 5] [--steps 40] [--out FILE]
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
from datadiet_jax.scores.registry import DYNAMICS_SCORES
from datadiet_jax.train.dynamics import init_tracked
from datadiet_jax.train.loop import _train_and_forget_step
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import create_train_state
from datadiet_jax.train.step import make_train_step


def _loadavg():
  return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def bench(filters: int, batch_size: int, num_examples: int, names, window: int, steps: int,
          warmup: int, seed: int = 0) -> dict:
  model = get_model("simple_cnn", 10, num_filters=filters)
  tx = make_optimizer(OptimizerConfig(), 780)
  train_step = make_train_step(model, tx, np.full(3, 120.0, np.float32),
                               np.full(3, 60.0, np.float32), augment=True)
  rng = np.random.default_rng(seed)
  num_batches = 8  # distinct batches, cycled (each id once per batch)
  batches = [jax.device_put({
      "images": rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8),
      "labels": rng.integers(0, 10, batch_size).astype(np.int32),
      "example_ids": rng.choice(num_examples, batch_size, replace=False).astype(np.int32)})
      for _ in range(num_batches)]
  carries = {"forgetting": init_tracked(num_examples, 10, True),
             "dynamics": init_tracked(num_examples, 10, True, names, window)}
  runners, out = {}, {}
  for kind, tracked in carries.items():
    step = _train_and_forget_step(train_step)  # a fresh jit per carry
    holder = {"state": create_train_state(model, tx, seed, 100 + seed, (32, 32, 3)),
              "tracked": tracked, "i": 0}

    def run(n, step=step, holder=holder):
      for _ in range(n):
        batch = batches[holder["i"] % num_batches]
        holder["state"], holder["tracked"], _ = step(holder["state"], holder["tracked"], batch)
        holder["i"] += 1
      jax.block_until_ready((holder["state"], holder["tracked"]))

    start = time.perf_counter()
    run(warmup)
    out[f"{kind}_compile_and_warmup_s"] = round(time.perf_counter() - start, 3)
    runners[kind] = run

  def timed(kind, n):
    start = time.perf_counter()
    runners[kind](n)
    return time.perf_counter() - start

  half = max(1, steps // 2)
  base = timed("forgetting", half)
  tracked_s = timed("dynamics", half) + timed("dynamics", half)
  base += timed("forgetting", half)
  out.update({"forgetting_ms_per_step": round(1e3 * base / (2 * half), 2),
              "dynamics_ms_per_step": round(1e3 * tracked_s / (2 * half), 2),
              "ratio": round(tracked_s / base, 4)})
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--filters", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_examples", type=int, default=10_000)
  parser.add_argument("--names", default=",".join(DYNAMICS_SCORES))
  parser.add_argument("--window", type=int, default=5)
  parser.add_argument("--steps", type=int, default=40, help="timed steps per carry")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--out", default=None, help="also write the JSON here")
  args = parser.parse_args(argv)
  names = tuple(n for n in args.names.split(",") if n)
  unknown = sorted(set(names) - set(DYNAMICS_SCORES))
  if unknown or not names:
    parser.error(f"--names: unknown {unknown or 'empty list'}; use {','.join(DYNAMICS_SCORES)}")
  if args.batch_size > args.num_examples:
    parser.error(f"--batch_size={args.batch_size} exceeds --num_examples={args.num_examples}")
  result = {"benchmark": "dynamics_step", "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "versions": package_versions(),
            "settings": {**vars(args), "names": list(names)}, "loadavg_before": _loadavg()}
  result["result"] = bench(args.filters, args.batch_size, args.num_examples, names,
                           args.window, args.steps, args.warmup)
  result["loadavg_after"] = _loadavg()
  print(json.dumps(result, indent=1))
  if args.out:
    write_json(args.out, result)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
