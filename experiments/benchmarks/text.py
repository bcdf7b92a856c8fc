"""Benchmark of the text encoder: train step and per-example scores on real SNIPS batches.

For the BERT encoder of experiments/flags/snips_joint.flags (2 layers, width 64, joint
intent + slot head, word-level vocabulary of SNIPS train, max length 40) prints JSON with

  train_step_ms       the jitted train step (AdamW, dropout on), batch --batch_size,
                      on host batches gathered per step as the loop does; steps/s and
                      the implied seconds per SNIPS epoch (13,084 / batch steps)
  fwd_bwd_ms          value_and_grad of the batch-mean joint loss (eval mode), score batch
  el2n_ms             joint EL2N (forward only)
  grand_head_ms       GraNd of the classifier head: vmap(grad) w.r.t. params['head']
  grand_ms            GraNd over all parameters: vmap(grad) w.r.t. every parameter (the
                      per-example gradient of the word-embedding table is dense, so this
                      is the expensive one)

Compilation and one warm-up call are excluded; times are medians of --repeats calls.
The machine's load average is recorded (CPU timings on a shared machine vary with it).

  python -m experiments.benchmarks.text [--score_batch_size 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from datadiet_jax import scores as S
from datadiet_jax.data.sources import load_text_dataset
from datadiet_jax.models import get_text_model
from datadiet_jax.models.bert import BertConfig
from datadiet_jax.provenance import package_versions
from datadiet_jax.train import tasks
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import create_train_state, num_params
from datadiet_jax.train.step import make_train_step
from experiments.benchmarks.timing import median_ms

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                            "nlp-text.tar.gz")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=DEFAULT_DATA)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--score_batch_size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=50, help="timed train steps")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--layers", type=int, default=2)
  args = parser.parse_args(argv)

  ds = load_text_dataset("joint_nlu", args.data_dir, max_length=40, subset="snips")
  config = BertConfig(vocab_size=ds.vocab_size, hidden_size=args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=2,
                      intermediate_size=2 * args.hidden, max_position_embeddings=40)
  model = get_text_model(ds.num_classes, ds.num_tags, config)
  tx = make_optimizer(OptimizerConfig(learning_rate=2e-3, optimizer="adamw", schedule="linear",
                                      warmup_steps=100, total_steps=1227, weight_decay=0.01),
                      409)
  state = create_train_state(model, tx, 0, 1, ds.input_spec)
  step = jax.jit(make_train_step(model, tx, task=tasks.task_for(ds)), donate_argnums=0)
  rng = np.random.default_rng(0)
  batches = [rng.choice(ds.num_train, args.batch_size, replace=False) for _ in range(args.steps)]
  state, m = step(state, {**ds.train_batch(batches[0]), "example_ids": batches[0]})
  jax.block_until_ready(m)
  start = time.perf_counter()
  for ids in batches:
    state, m = step(state, {**ds.train_batch(ids), "example_ids": ids})
  jax.block_until_ready(m)
  step_ms = 1e3 * (time.perf_counter() - start) / args.steps

  variables = {"params": state.params}
  ids = np.arange(args.score_batch_size)
  inputs, labels = ds.train_inputs(ids), ds.train_targets(ids)
  apply_fn = S.eval_apply_fn(model)
  loss = lambda p, x, y: tasks.per_example_loss(apply_fn({"params": p}, x), y).mean()
  fns = {"fwd_bwd_ms": jax.jit(jax.value_and_grad(loss)),
         "el2n_ms": jax.jit(lambda p, x, y: S.el2n(apply_fn, {"params": p}, x, y)),
         "grand_head_ms": jax.jit(lambda p, x, y: S.grand_head(apply_fn, {"params": p}, x, y)),
         "grand_ms": jax.jit(lambda p, x, y: S.grand(apply_fn, {"params": p}, x, y))}
  result = {"model": f"bert {args.layers}x{args.hidden} joint (snips_joint.flags)",
            "params": num_params(state.params), "batch_size": args.batch_size,
            "train_step_ms": round(step_ms, 2),
            "train_steps_per_s": round(1e3 / step_ms, 1),
            "seconds_per_snips_epoch": round(step_ms * (ds.num_train // args.batch_size) / 1e3, 1),
            "score_batch_size": args.score_batch_size}
  for name, fn in fns.items():
    result[name] = round(median_ms(
        lambda: jax.block_until_ready(fn(variables["params"], inputs, labels)), args.repeats), 1)
  result["grand_over_fwd_bwd"] = round(result["grand_ms"] / result["fwd_bwd_ms"], 2)
  result["grand_head_over_fwd_bwd"] = round(result["grand_head_ms"] / result["fwd_bwd_ms"], 2)
  result["loadavg_1min"] = os.getloadavg()[0]
  result["cpu_count"] = os.cpu_count()
  result["devices"] = [str(d) for d in jax.devices()]
  result["versions"] = package_versions()
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
