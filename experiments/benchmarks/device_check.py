"""The accelerator check (run by device_check.sh): one JSON with the numbers of issue 10.

  grand_at_init   GraNd at init over --inits random inits (ghost norms, members vmapped) on
                  every training image, ResNet18-64 (goal <= 20 s on an H200)
  el2n            EL2N of --inits checkpoints over the same images (random inits stand in
                  for checkpoints: the cost is the same)
  train_steps     train steps/s of the jitted train step (augmentation included) vmapped
                  over N members (N in --members), ResNet18-64, batch 128, f32 and bf16,
                  next to N single-member steps one after another
  pipeline        real-data / synthetic-batch steps/s of train_step.py (needs the data)

Images are the CIFAR-10 archive's (--data_dir) when it exists, else random u8 of the same
shape (recorded in the JSON). Every section records wall seconds including compilation and,
where it is run twice, the second (compiled) run. --tiny runs everything at toy sizes (a CPU
smoke test). Sections are skipped, with a note, once --budget_s is spent.

  python -m experiments.benchmarks.device_check --out $OUT/device_check.json [--tiny]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import numpy as np

from datadiet_jax import scores as S
from datadiet_jax.artifacts import write_json
from datadiet_jax.models import get_model
from datadiet_jax.provenance import package_versions
from datadiet_jax.train.ensemble import stack_trees
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import create_train_state
from datadiet_jax.train.step import make_train_step

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA = os.path.join(os.path.dirname(_REPO), "shared", "data", "cifar10-jpeg.tar.gz")


def _info(msg: str) -> None:
  print(f"[device_check] {msg}", file=sys.stderr, flush=True)


def _timed(fn):
  start = time.perf_counter()
  result = fn()
  jax.block_until_ready(result)
  return result, round(time.perf_counter() - start, 3)


def _images(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str, object]:
  """(u8 images [N, 32, 32, 3], i32 labels [N], mean, std, source, dataset or None)."""
  if os.path.exists(args.data_dir):
    from datadiet_jax.data.sources import load_dataset
    dataset = load_dataset("image_folder", data_dir=args.data_dir, cache_dir=args.cache_dir)
    n = min(args.num_examples, dataset.num_train)
    return (dataset.train_images[:n], dataset.train_labels[:n], dataset.mean, dataset.std,
            args.data_dir, dataset)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.num_examples, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, args.num_examples).astype(np.int32)
  return (images, labels, np.full(3, 127.5, np.float32), np.full(3, 64.0, np.float32),
          "random u8 (no data archive found)", None)


def check_scores(model, images, labels, mean, std, inits: int, chunk: int) -> dict:
  seeds = list(range(inits))
  out = {}
  _, out["grand_at_init_s"] = _timed(lambda: S.grand_at_init(
      model, seeds, images, labels, chunk, mean, std, progress=False)[2])
  _, out["grand_at_init_s_second_run"] = _timed(lambda: S.grand_at_init(
      model, seeds, images, labels, chunk, mean, std, progress=False)[2])
  stacked = S.init_stacked_variables(model, seeds, images.shape[1:])
  apply_fn = S.eval_apply_fn(model)
  for run in ("el2n_s", "el2n_s_second_run"):
    _, out[run] = _timed(lambda: S.score_ensemble("el2n", apply_fn, stacked, images, labels,
                                                  chunk, mean, std, progress=False)[2])
  return out


def check_train_steps(name: str, width: int, members: list[int], batch: int, steps: int,
                      image_shape, mean, std) -> dict:
  out = {}
  rng = np.random.default_rng(0)
  for dtype in ("float32", "bfloat16"):
    model = get_model(name, 10, width, dtype=dtype)
    tx = make_optimizer(OptimizerConfig(), steps_per_epoch=100)
    step = make_train_step(model, tx, mean, std, augment=True)
    single = jax.jit(step)
    for n in members:
      states = [create_train_state(model, tx, s, s, image_shape) for s in range(n)]
      batches = [{"images": rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8),
                  "labels": rng.integers(0, 10, batch).astype(np.int32),
                  "example_ids": np.arange(batch, dtype=np.int32)} for _ in range(n)]
      stacked_state, stacked_batch = stack_trees(states), stack_trees(batches)
      vmapped = jax.jit(jax.vmap(step))
      _, compile_s = _timed(lambda: vmapped(stacked_state, stacked_batch))
      start = time.perf_counter()
      for _ in range(steps):
        stacked_state, metrics = vmapped(stacked_state, stacked_batch)
      jax.block_until_ready((stacked_state, metrics))
      vmap_s = (time.perf_counter() - start) / steps
      jax.block_until_ready(single(states[0], batches[0]))
      start = time.perf_counter()
      for _ in range(steps):
        for m in range(n):
          states[m], metrics = single(states[m], batches[m])
      jax.block_until_ready((states, metrics))
      seq_s = (time.perf_counter() - start) / steps
      out[f"{dtype}_N{n}"] = {"vmapped_steps_per_s": round(1 / vmap_s, 3),
                              "sequential_steps_per_s": round(1 / seq_s, 3),
                              "vmapped_over_sequential": round(seq_s / vmap_s, 3),
                              "first_call_s": compile_s}
      _info(f"{name}-{width} {dtype} N={n}: {out[f'{dtype}_N{n}']}")
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="the JSON file to write")
  parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke test)")
  parser.add_argument("--data_dir", default=DEFAULT_DATA)
  parser.add_argument("--cache_dir", default=None)
  parser.add_argument("--budget_s", type=float, default=420.0,
                      help="skip the remaining sections once this many seconds are spent")
  args = parser.parse_args(argv)
  tiny = args.tiny
  args.num_examples = 96 if tiny else 50_000
  # --tiny: small_cnn instead of ResNet18 (compiles in seconds on a CPU).
  name, width, inits, chunk = (("small_cnn", 4, 2, 32) if tiny
                               else ("resnet18_lowres", 64, 10, 512))
  members, batch, steps = ([1, 2], 8, 2) if tiny else ([1, 4, 8], 128, 10)
  start = time.perf_counter()
  out = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "tiny": tiny, "backend": jax.default_backend(),
         "devices": [str(d) for d in jax.devices()],
         "versions": {k: v for k, v in package_versions().items()
                      if k in ("jax", "jaxlib", "flax", "optax", "numpy")},
         "config": {"model": f"{name}_{width}", "inits": inits, "chunk": chunk,
                    "members": members, "batch_size": batch, "timed_steps": steps}}
  images, labels, mean, std, out["images"], dataset = _images(args)
  out["num_examples"] = int(len(images))
  model = get_model(name, 10, width)

  def spent() -> bool:
    return time.perf_counter() - start > args.budget_s

  sections = [
      ("scores", lambda: check_scores(model, images, labels, mean, std, inits, chunk)),
      ("train_steps", lambda: check_train_steps(name, width, members, batch,
                                                steps, images.shape[1:], mean, std)),
  ]
  if dataset is not None:
    from experiments.benchmarks.train_step import bench_model

    def pipeline():
      entry = bench_model(f"{name}_{width}", model, dataset, batch, 4 if tiny else 20,
                          1, False, 0)
      return {"pipeline_ratio": entry["pipeline_ratio"],
              "synthetic_steps_per_s": entry["synthetic"]["steps_per_s"],
              "real_steps_per_s": entry["real"]["steps_per_s"]}
    sections.append(("pipeline", pipeline))
  else:
    out["pipeline"] = "skipped: no data archive (the ratio needs real images)"
  for key, fn in sections:
    if spent():
      out[key] = f"skipped: the {args.budget_s:.0f} s budget was spent"
      continue
    _info(f"{key} ...")
    out[key], out[f"{key}_wall_s"] = _timed(fn)
    write_json(args.out, out)  # partial results survive a timeout
  out["total_s"] = round(time.perf_counter() - start, 2)
  write_json(args.out, out)
  _info(f"wrote {args.out} in {out['total_s']} s")
  return out


if __name__ == "__main__":
  main()
