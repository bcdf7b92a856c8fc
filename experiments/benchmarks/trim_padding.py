"""Benchmark of `--trim_padding_multiple`: the train step on full-length text batches vs
the same batches cut to their longest example (rounded up to a multiple), and dynamic
pruning's re-scoring pass (EL2N of --score_examples train examples, batch
--score_batch_size) at full length vs in length buckets, in one process.

Prints JSON: ms per step of each (median over --repeats passes over the same --steps
batches; every distinct trimmed length is compiled before timing), their ratio, the
lengths seen, and the train loss of both on the first batch (close, not equal: dropout
draws its masks for each shape; tests/test_text_train.py checks the eval-mode loss and
gradients are equal); seconds per re-scoring pass of each (median over --repeats, compiled
first), their ratio, the buckets' sizes and the largest score difference.

  python -m experiments.benchmarks.trim_padding --pretrained_dir DIR --subset atis \
      --max_length 48 [--multiple 16] [--steps 20] [--score_examples 0 (all)]
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
from datadiet_jax.data.text import length_buckets
from datadiet_jax.models import get_text_model
from datadiet_jax.models.pretrained import vocab_and_lowercase
from datadiet_jax.provenance import package_versions
from datadiet_jax.scores.current_model import score_with_variables
from datadiet_jax.train import tasks
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import create_train_state, model_variables
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


def _time_rescoring(model, state, dataset, args, rng) -> dict:
  """Seconds per EL2N re-scoring pass at full length vs in length buckets (median over
  args.repeats interleaved passes, each variant compiled by a first untimed pass)."""
  n = dataset.num_train if args.score_examples <= 0 else min(args.score_examples,
                                                              dataset.num_train)
  ids = np.sort(rng.choice(dataset.num_train, n, replace=False))
  inputs, targets = dataset.train_inputs(ids), dataset.train_targets(ids)
  variables = model_variables(state)
  variants = {"full": 0, "bucketed": args.multiple}

  def one_pass(multiple):
    start = time.perf_counter()
    scores = score_with_variables("el2n", model, variables, inputs, targets, None, None,
                                  args.score_batch_size, trim_multiple=multiple)
    return time.perf_counter() - start, scores

  scores = {name: one_pass(multiple)[1] for name, multiple in variants.items()}  # compile
  seconds = {name: [] for name in variants}
  for _ in range(args.repeats):
    for name, multiple in variants.items():
      seconds[name].append(one_pass(multiple)[0])
  full_s, bucketed_s = (float(np.median(seconds[k])) for k in variants)
  return {"examples": int(n), "score_batch_size": args.score_batch_size,
          "buckets": {str(length): int(len(b)) for length, b in length_buckets(
              inputs["attention_mask"], args.multiple, args.score_batch_size)},
          "full_pass_seconds": round(full_s, 2), "bucketed_pass_seconds": round(bucketed_s, 2),
          "speedup": round(full_s / bucketed_s, 3),
          "max_abs_score_difference": float(np.abs(scores["full"] - scores["bucketed"]).max())}


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
  parser.add_argument("--score_examples", type=int, default=1024,
                      help="train examples in the re-scoring pass (0: all)")
  parser.add_argument("--score_batch_size", type=int, default=128)
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
  rescoring = _time_rescoring(model, state, full, args, rng)
  result = {"dataset": f"{args.dataset}/{args.subset}", "pretrained_dir": args.pretrained_dir,
            "max_length": args.max_length, "multiple": args.multiple,
            "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
            "trimmed_lengths": {str(k): v for k, v in sorted(lengths.items())},
            "full_step_ms": round(full_ms, 1), "trimmed_step_ms": round(trimmed_ms, 1),
            "speedup": round(full_ms / trimmed_ms, 3),
            "first_batch_loss": {k: round(v, 6) for k, v in losses.items()},
            "rescoring": rescoring,
            "loadavg_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
            "versions": package_versions()}
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
