"""Benchmark: train and score a records data set larger than memory; records vs in-memory speed.

One run, every phase in its own child process (so each peak RSS is that phase's alone,
`resource.getrusage(RUSAGE_SELF).ru_maxrss`):

  folder_write     --folder_images PNG files (64x64x3) in an image-folder layout.
  folder_convert   `records.convert_image_folder` on them (the streaming converter: one
                   image decoded at a time); its peak RSS against the decoded size.
  big_convert      synthetic u8[--num_images, 64, 64, 3] images (each a pure function of its
                   id, generated on demand: never held in memory) -> ArrayRecord shards
                   (`records.convert_dataset`).
  big_train_score  `python -m experiments.cifar --mode=train_score --dataset=records` on
                   them: --big_steps train steps at batch 128, then EL2N of every example.
                   Peak RSS must stay under --memory_cap_mb, which the data exceeds
                   several times (`data_over_cap`); `within_cap` says whether it did.
  cifar_memory /   CIFAR-10-sized synthetic data (50000 x 32x32x3 u8, random labels), in
  cifar_records    memory vs converted to records: train images/s (wall time of
                   --cifar_steps steps at --batch_size 128 after a warm-up run that
                   compiles, `train_run` with evaluation and checkpoints only at the start
                   and end) and EL2N scoring images/s (`score_ensemble` over all 50000);
                   `records_over_memory` = records / in-memory.
  cifar_records_loader  the records again, train batches read by the grain loader
                   (--loader_workers processes or --loader_threads threads, --device_prefetch
                   batches placed ahead; data/loader.py): `records_loader_over_memory`.
                   `largest_child_peak_rss_mb` is the largest worker's.
--skip_big runs only the CIFAR-sized phases.

Prints one JSON object (stdout). Usage (a few minutes on 2 CPU cores with the defaults):

  python -m experiments.benchmarks.records_memory [--num_images 250000 --memory_cap_mb 1000]

Measured (2 shared CPU cores, no GPU; defaults; 2026-12-06):
  250000 synthetic 64x64x3 images = 2930 MB (3.1 GB of shards; 26 s to convert, peak RSS
  206 MB); train 50 steps at batch 128 + EL2N of all 250000 from the records: 229 s, peak
  RSS 723 MB (under the 1000 MB cap: the data is 2.9x the cap, 4.1x the peak).
  CIFAR-10-sized (50000 x 32x32x3), small_cnn width 8, batch 128:
                      train images/s   EL2N images/s   peak RSS
    in memory              2881            8333         785 MB
    records                3115            8169         571 MB
    records / memory       1.08            0.98         0.73
  An earlier run with --score_batch_size=1024 (same machine, other load): train 0.82x,
  EL2N 1.03x, and the big phase peaked at 1007 MB (glibc keeps freed 12 MB read buffers),
  so the ratios move by ~+-0.15 with the background load of the shared cores.

Measured again (same machine, 2026-12-07, defaults + --loader_threads=2 --loader_workers=0):
  folder_convert: 60100 PNGs (704 MB decoded) -> records in 27.5 s, peak RSS 208 MB (0.30x
  the decoded size; the in-memory loader would hold all 704 MB). big phase: 250000 images,
  2930 MB = 2.9x the 1000 MB cap; train 50 steps + EL2N of all: 117 s, peak RSS 700 MB.
  CIFAR-sized, train images/s: in memory 5195, records read in the loop 4914 (0.95x),
  records read ahead by 2 grain threads + 2 batches on device 4401 (0.85x); EL2N 1.05x.
  An earlier run the same hour (--skip_big): in memory 3780, in the loop 3409 (0.90x),
  grain threads 3722 (0.98x); with 1 grain worker process instead (--loader_workers=1):
  0.53x, the worker's start-up (a spawned process importing the library, ~3 s) inside the
  5 s timed run and a third busy process on 2 cores. On 2 cores XLA already uses both, so
  reading ahead has little idle time to fill; it pays where decoding is costly (JPEG) and
  cores are spare.

Real CIFAR-10 (--cifar_folder=../shared/data/cifar10-jpeg.tar.gz --skip_big --cifar_steps=600
--loader_threads=2 --loader_workers=0; same machine, 2026-12-07): converted by the streaming
converter in 10.6 s; train images/s in memory 4934, records in the loop 4702 (0.95x), records
read by 2 grain threads + 2 batches on device 4626 (0.94x); EL2N 0.86x. At the default 150
timed steps (5 s) the same run gave 0.88x / 0.73x: short timings are dominated by noise.

The in-memory path gathers from a numpy array; the records path reads a train batch with
one batched ArrayRecord read per shard touched (`RecordSource.read`), in the loop or in
the grain loader's threads / worker processes (data/loader.py). `largest_child_peak_rss_mb`
is the largest ended child's peak (a grain worker; a forked helper counts the pages it
inherited).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

_BIG = ("folder_write", "folder_convert", "big_convert", "big_train_score")
_PHASES = (*_BIG, "cifar_convert", "cifar_memory", "cifar_records", "cifar_records_loader")


class SyntheticImages:
  """u8[N, H, W, C] random images, image i a pure function of (seed, i), made on indexing."""

  def __init__(self, n: int, shape: tuple, seed: int):
    self.shape, self.seed = (int(n), *shape), seed
    self.dtype, self.ndim = np.dtype(np.uint8), 4

  def __len__(self) -> int:
    return self.shape[0]

  def _one(self, i: int) -> np.ndarray:
    return np.random.default_rng([self.seed, int(i)]).integers(0, 256, self.shape[1:], np.uint8)

  def __getitem__(self, index):
    if isinstance(index, slice):
      index = np.arange(len(self))[index]
    if np.ndim(index) == 0:
      return self._one(index)
    return np.stack([self._one(i) for i in np.asarray(index)])


def synthetic_dataset(n: int, n_test: int, shape: tuple, seed: int, lazy: bool):
  """A 10-class Dataset of random images (lazy: generated on indexing) and random labels."""
  from datadiet_jax.data.dataset import Dataset
  rng = np.random.default_rng(seed)
  train, test = SyntheticImages(n, shape, seed), SyntheticImages(n_test, shape, seed + 1)
  if not lazy:
    train, test = train[:], test[:]
  return Dataset(name=f"synthetic{shape[0]}", train_images=train,
                 train_labels=rng.integers(0, 10, n).astype(np.int32), test_images=test,
                 test_labels=rng.integers(0, 10, n_test).astype(np.int32),
                 class_names=tuple(str(c) for c in range(10)),
                 mean=np.full(shape[-1], 127.5, np.float32),
                 std=np.full(shape[-1], 73.9, np.float32),
                 example_order=f"synthetic: image i = default_rng([{seed}, i])")


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _train_and_score(dataset, root: str, args, loader=None) -> dict:
  """Train images/s (wall time after a warm-up run) and EL2N scoring images/s; `loader`
  (a LoaderConfig): how training reads its batches (default: in the loop)."""
  from datadiet_jax.data.loader import LoaderConfig
  from datadiet_jax.models import get_model
  from datadiet_jax.scores.ensemble import init_stacked_variables, score_ensemble
  from datadiet_jax.scores._common import eval_apply_fn
  from datadiet_jax.train.loop import TrainConfig, train_run
  from datadiet_jax.train.optimizer import OptimizerConfig
  model = get_model("small_cnn", num_classes=10, num_filters=args.num_filters)
  def run(name, steps):
    config = TrainConfig(num_steps=steps, batch_size=args.batch_size, eval_every_steps=-1,
                         save_steps=-1, track_forgetting=False, tensorboard=False,
                         loader=loader or LoaderConfig())
    start = time.perf_counter()
    train_run(os.path.join(root, name), model, dataset, OptimizerConfig(), config, 0, 0,
              progress=False)
    return time.perf_counter() - start
  run("warmup", 2)
  train_s = run("timed", args.cifar_steps)
  stacked = init_stacked_variables(model, [0], dataset.input_spec)
  warm = args.score_batch_size
  score_ensemble("el2n", eval_apply_fn(model), stacked, dataset.train_inputs()[:warm],
                 dataset.train_targets()[:warm], warm, dataset.mean, dataset.std, False)
  start = time.perf_counter()
  score_ensemble("el2n", eval_apply_fn(model), stacked, dataset.train_inputs(),
                 dataset.train_targets(), args.score_batch_size, dataset.mean, dataset.std, False)
  score_s = time.perf_counter() - start
  return {"train_images_per_s": args.cifar_steps * args.batch_size / train_s,
          "train_wall_s": train_s, "score_images_per_s": dataset.num_train / score_s,
          "score_wall_s": score_s}


def run_phase(phase: str, args) -> dict:
  from datadiet_jax.data import records
  big, cifar = os.path.join(args.root, "big"), os.path.join(args.root, "cifar")
  start = time.perf_counter()
  folder = os.path.join(args.root, "folder")
  if phase == "folder_write":  # --folder_images PNGs, 64x64x3, in an image-folder layout
    from PIL import Image
    for split, count in (("train", args.folder_images), ("test", 100)):
      for i in range(count):
        path = os.path.join(folder, split, f"class{i % 10}", f"{i:07d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(SyntheticImages(count, (64, 64, 3), 2)._one(i)).save(path)
    out = {"decoded_mb": round((args.folder_images + 100) * 64 * 64 * 3 / 2**20, 1)}
  elif phase == "folder_convert":  # the streaming converter: one image in memory at a time
    records.convert_image_folder(folder, os.path.join(args.root, "folder_records"),
                                 shard_size=args.shard_size, progress=False)
    out = {"decoded_mb": round((args.folder_images + 100) * 64 * 64 * 3 / 2**20, 1)}
  elif phase == "big_convert":
    records.convert_dataset(synthetic_dataset(args.num_images, 1000, (64, 64, 3), 0, True), big,
                            shard_size=args.shard_size, progress=False)
    out = {"bytes_on_disk": sum(os.path.getsize(os.path.join(big, f)) for f in os.listdir(big))}
  elif phase == "big_train_score":
    from absl import flags
    from experiments import cifar as cli
    argv = ["cifar", "--mode=train_score", "--dataset=records", f"--data_dir={big}",
            f"--workdir={os.path.join(args.root, 'big_work')}", f"--num_steps={args.big_steps}",
            f"--batch_size={args.batch_size}", "--scores=el2n", "--model=small_cnn",
            f"--num_filters={args.num_filters}", "--eval_every_steps=-1", "--save_steps=-1",
            "--notrack_forgetting", "--noprogress", "--notensorboard",
            f"--score_batch_size={args.score_batch_size}"]
    cli.main(cli.parse_flags(argv))
    flags.FLAGS.unparse_flags()
    from datadiet_jax.scores import load_scores
    scores = load_scores(os.path.join(args.root, "big_work"), "el2n", args.big_steps)
    out = {"scored_examples": int(len(scores)), "scores_finite": bool(np.isfinite(scores).all())}
  elif phase == "cifar_convert":
    if args.cifar_folder:  # real CIFAR-10: the streaming image-folder converter
      records.convert_image_folder(args.cifar_folder, cifar, shard_size=args.shard_size,
                                   progress=False)
    else:
      records.convert_dataset(synthetic_dataset(50000, 1000, (32, 32, 3), 1, True), cifar,
                              shard_size=args.shard_size, progress=False)
    out = {}
  elif phase == "cifar_memory":
    if args.cifar_folder:
      from datadiet_jax.data.sources import load_dataset
      data = load_dataset("image_folder", data_dir=args.cifar_folder, sort_by_class=True,
                          cache_dir=os.path.join(args.root, "cache"))
    else:
      data = synthetic_dataset(50000, 1000, (32, 32, 3), 1, False)
    out = _train_and_score(data, os.path.join(args.root, "mem_runs"), args)
  elif phase == "cifar_records":
    out = _train_and_score(records.load_records(cifar), os.path.join(args.root, "rec_runs"), args)
  else:  # cifar_records_loader: train batches read by grain workers, prefetched to device
    from datadiet_jax.data.loader import LoaderConfig
    loader = LoaderConfig(workers=args.loader_workers, threads=args.loader_threads,
                          device_prefetch=args.device_prefetch)
    out = _train_and_score(records.load_records(cifar), os.path.join(args.root, "loader_runs"),
                           args, loader)
    out["loader"] = loader.__dict__
  children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
  return {**out, "wall_s": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb(),
          "largest_child_peak_rss_mb": children}  # grain workers (ended ones) included


def _flags(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=250000, help="64x64x3 train images")
  parser.add_argument("--memory_cap_mb", type=float, default=1000.0,
                      help="peak RSS the big train+score phase must stay under")
  parser.add_argument("--folder_images", type=int, default=60000, help="64x64 PNG train "
                      "images of the folder_convert phase")
  parser.add_argument("--big_steps", type=int, default=50, help="train steps on the big data")
  parser.add_argument("--cifar_steps", type=int, default=150, help="timed CIFAR-sized steps")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_filters", type=int, default=8, help="small_cnn width")
  parser.add_argument("--score_batch_size", type=int, default=256, help="examples per "
                      "scoring call (1024 raised the big phase's peak RSS by ~80 MB: glibc "
                      "keeps the freed 12 MB read buffers)")
  parser.add_argument("--shard_size", type=int, default=10000)
  parser.add_argument("--loader_workers", type=int, default=1, help="grain worker processes "
                      "of the cifar_records_loader phase")
  parser.add_argument("--loader_threads", type=int, default=0)
  parser.add_argument("--device_prefetch", type=int, default=2)
  parser.add_argument("--skip_big", action="store_true", help="only the CIFAR-sized phases")
  parser.add_argument("--cifar_folder", default=None, help="real CIFAR-10 as an image folder "
                      "(e.g. ../shared/data/cifar10-jpeg.tar.gz) instead of synthetic data")
  parser.add_argument("--root", default=None, help="scratch folder (default: a temp folder, "
                      "removed at the end)")
  parser.add_argument("--phase", choices=_PHASES, default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = _flags(argv)
  if args.phase:  # a child: one phase, its JSON on the last stdout line
    print(json.dumps(run_phase(args.phase, args)), flush=True)
    return
  root = args.root or tempfile.mkdtemp(prefix="records_memory_")
  results = {}
  try:
    for phase in _PHASES:
      if args.skip_big and phase in _BIG:
        continue
      cmd = [sys.executable, "-m", "experiments.benchmarks.records_memory", f"--phase={phase}",
             f"--root={root}", *[f"--{k}={v}" for k, v in vars(args).items()
                                 if k not in ("phase", "root", "skip_big") and v is not None]]
      print(f"[records_memory] {phase} ...", file=sys.stderr, flush=True)
      done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
      results[phase] = json.loads(done.stdout.strip().splitlines()[-1])
  finally:
    if args.root is None:
      shutil.rmtree(root, ignore_errors=True)
  data_mb = args.num_images * 64 * 64 * 3 / 2**20
  mem, rec, fed = (results[p] for p in ("cifar_memory", "cifar_records", "cifar_records_loader"))
  ratio = lambda a, key: round(a[key] / mem[key], 3)
  report = {"machine": f"{os.cpu_count()} CPUs", "phases": results,
            "records_over_memory": {key: ratio(rec, key) for key in (
                "train_images_per_s", "score_images_per_s", "peak_rss_mb")},
            "records_loader_over_memory": {key: ratio(fed, key) for key in (
                "train_images_per_s", "peak_rss_mb")}}
  if not args.skip_big:
    big = results["big_train_score"]
    report.update({"num_images_64x64": args.num_images, "data_mb": round(data_mb, 1),
                   "memory_cap_mb": args.memory_cap_mb,
                   "data_over_cap": round(data_mb / args.memory_cap_mb, 2),
                   "within_cap": big["peak_rss_mb"] < args.memory_cap_mb,
                   "folder_convert_peak_rss_over_decoded": round(
                       results["folder_convert"]["peak_rss_mb"]
                       / results["folder_convert"]["decoded_mb"], 3)})
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
