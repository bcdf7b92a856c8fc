"""Benchmark of `--trim_padding_multiple`: the train step on full-length text batches vs
the same batches cut to their longest example (rounded up to a multiple), in one process.

Prints JSON: ms per step of each (median over --repeats passes over the same --steps
batches; every distinct trimmed length is compiled before timing), their ratio, the
lengths seen, and the train loss of both on the first batch (close, not equal: dropout
draws its masks for each shape; tests/test_text_train.py checks the eval-mode loss and
gradients are equal).

  python -m experiments.benchmarks.trim_padding --pretrained_dir DIR --subset atis \
      --max_length 48 [--multiple 16] [--steps 20]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time

import jax
import numpy as np

from datadiet_jax.data.sources import load_text_dataset
from datadiet_jax.models import get_text_model
from datadiet_jax.models.pretrained import vocab_and_lowercase
from datadiet_jax.provenance import package_versions
from datadiet_jax.train import tasks
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import create_train_state
from datadiet_jax.train.step import make_train_step

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                            "nlp-text.tar.gz")


def _time_steps(step, state, dataset, batches) -> tuple[float, float]:
  """(ms per step, loss of the first batch) over `batches` (compiled shapes warmed up)."""
  start = time.perf_counter()
  first_loss = None
  for ids in batches:
    state, metrics = step(state, {**dataset.train_batch(ids), "example_ids": ids})
    if first_loss is None:
      first_loss = float(metrics["loss"])
  jax.block_until_ready(state.params)
  return 1e3 * (time.perf_counter() - start) / len(batches), first_loss


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pretrained_dir", required=True)
  parser.add_argument("--data_dir", default=DEFAULT_DATA)
  parser.add_argument("--dataset", default="joint_nlu")
  parser.add_argument("--subset", default="atis")
  parser.add_argument("--max_length", type=int, default=48)
  parser.add_argument("--multiple", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)

  vocab, lowercase = vocab_and_lowercase(args.pretrained_dir)
  full = load_text_dataset(args.dataset, args.data_dir, args.max_length, args.subset,
                           vocab_file=vocab, lowercase=lowercase)
  trimmed = full.replace(trim_multiple=args.multiple)
  model = get_text_model(full.num_classes, full.num_tags, pretrained_dir=args.pretrained_dir)
  tx = make_optimizer(OptimizerConfig(learning_rate=5e-5, optimizer="adamw", schedule="linear",
                                      warmup_steps=10, total_steps=10_000, weight_decay=0.01),
                      full.num_train // args.batch_size)
  step = jax.jit(make_train_step(model, tx, task=tasks.task_for(full)))
  state = create_train_state(model, tx, 0, 1, full.input_spec)
  rng = np.random.default_rng(0)
  batches = [rng.choice(full.num_train, args.batch_size, replace=False)
             for _ in range(args.steps)]
  lengths = collections.Counter(trimmed.trimmed_length(ids) for ids in batches)
  for dataset in (full, trimmed):  # compile every shape first
    for length in sorted(lengths) if dataset is trimmed else [full.max_length]:
      ids = next(b for b in batches if dataset is full or trimmed.trimmed_length(b) == length)
      jax.block_until_ready(step(state, {**dataset.train_batch(ids), "example_ids": ids}))
  times = {"full": [], "trimmed": []}
  losses = {}
  for _ in range(args.repeats):  # interleaved, so load changes hit both alike
    for name, dataset in (("full", full), ("trimmed", trimmed)):
      ms, losses[name] = _time_steps(step, state, dataset, batches)
      times[name].append(ms)
  full_ms, trimmed_ms = (float(np.median(times[k])) for k in ("full", "trimmed"))
  result = {"dataset": f"{args.dataset}/{args.subset}", "pretrained_dir": args.pretrained_dir,
            "max_length": args.max_length, "multiple": args.multiple,
            "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
            "trimmed_lengths": {str(k): v for k, v in sorted(lengths.items())},
            "full_step_ms": round(full_ms, 1), "trimmed_step_ms": round(trimmed_ms, 1),
            "speedup": round(full_ms / trimmed_ms, 3),
            "first_batch_loss": {k: round(v, 6) for k, v in losses.items()},
            "loadavg_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
            "versions": package_versions()}
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
