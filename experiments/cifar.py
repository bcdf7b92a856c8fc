r"""Data Diet experiments from flags.

  python -m experiments.cifar --flagfile=experiments/flags/quickstart.flags

Modes (--mode):
  train   train --num_runs runs (seeds 42 + r*424242, 4242 + r*424242) into
          <workdir>/runs/run_<r>/ (checkpoints, metrics.csv, forget_scores.npy).
Rerunning the same command resumes interrupted runs and skips finished ones.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

from experiments import common
from experiments.train_runs import check_config, run_config, train_runs

FLAGS = flags.FLAGS
MODES = ("train",)
flags.DEFINE_enum("mode", "train", MODES, "What to run.")

log = logging.getLogger("datadiet_jax")


def run_train() -> None:
  workdir = common.setup_workdir()
  dataset = common.load_dataset_from_flags()
  model = common.model_from_flags(dataset.num_classes)
  optimizer = common.optimizer_config_from_flags()
  train = common.train_config_from_flags(dataset.num_train)
  check_config(workdir, run_config(dataset, FLAGS.model, FLAGS.num_filters, FLAGS.dtype,
                                   optimizer, train))
  log.info("dataset %s: %d train / %d test, %d classes, images %s", dataset.name,
           dataset.num_train, dataset.num_test, dataset.num_classes, dataset.image_shape)
  results = train_runs(workdir, range(FLAGS.num_runs), common.run_seeds, model, dataset,
                       optimizer, train, progress=FLAGS.progress,
                       stop_after_step=FLAGS.stop_after_step, mesh=common.mesh_from_flags())
  for run, result in enumerate(results):
    log.info("run %d: step %d, test accuracy %.4f (%s)", run, result.final_step,
             result.test_accuracy, result.run_dir)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.distributed:
    import jax
    jax.distributed.initialize()
  common.setup_logging()
  try:
    {"train": run_train}[FLAGS.mode]()
  except common.USER_ERRORS as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
