r"""Data Diet experiments from flags.

  python -m experiments.cifar --flagfile=experiments/flags/quickstart.flags

Modes (--mode):
  train        train --num_runs runs (seeds 42 + r*424242, 4242 + r*424242) into
               <workdir>/runs/run_<r>/ (checkpoints, metrics.csv, forget_scores.npy).
  score        score those runs at --score_step with each of --scores, averaged over
               the runs, into <workdir>/scores/<score>/step_<k>.npy (+ .json sidecar);
               --grand_init_runs R adds GraNd at initialisation over R fresh inits.
  train_score  both.
  figure1      the paper's Figure 1 (see datadiet_jax/pipelines/figure1.py): score runs -> scores ->
               each --methods x --prune_fractions x --num_seeds trained on its subset ->
               <workdir>/results/{results.md,results.csv,accuracy_vs_pruned.png,
               score_correlations.png}.
  pool_selection  a model trained on --pool_base_per_class examples per class scores a
               pool of --pool_size others (--pool_score); the top --pool_k pool examples,
               or --pool_k random ones, are added to the base set and trained on
               (--num_steps for every run, --num_seeds seeds; see
               datadiet_jax/pipelines/pool_selection.py) -> <workdir>/pool/results.{md,csv}.
  merge_scores merge the example shards of each of --scores at --score_step, scored by
               --num_workers workers, into the one score file (automatic when the last
               worker finishes; this mode refuses shards of other checkpoints/settings).
  dynamic      train --num_runs runs with dynamic data pruning (--dynamic_method: a score
               re-scored every --dynamic_rescore_every epochs after
               --dynamic_warmup_epochs, keeping --dynamic_keep_fraction; `random`; or
               `infobatch` soft pruning with --infobatch_r/--infobatch_delta) into
               <workdir>/runs/run_<r>/, with compute accounting in summary.json.
  dynamic_sweep  full data, static EL2N, dynamic EL2N/loss/random at
               --dynamic_keep_fractions and InfoBatch at --infobatch_ratios, --num_seeds
               seeds each (datadiet_jax/pipelines/dynamic_sweep.py) ->
               <workdir>/dynamic/results/{results.md,results.csv,accuracy_vs_compute.png}.
  score_timing  the figure-1 score runs scored at --score_timing_points epochs: Spearman
               with the last point, kept class balance, retraining at
               --score_timing_prune_fraction (datadiet_jax/pipelines/score_timing.py) ->
               <workdir>/results/score_timing.{md,csv,png}.
  convert      write the data set of --dataset/--data_dir (image or text) as ArrayRecord shards +
               records.json into --records_out (data/records.py).
Rerunning the same command resumes interrupted runs and skips finished ones.
--num_workers=K --worker_index=i splits the runs and the scored examples of any mode
over K processes or hosts sharing --workdir (see datadiet_jax/sweep/).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys

from absl import app, flags

from experiments import common, studies, sweep
from datadiet_jax.pipelines.train_runs import check_config, run_config, train_runs

FLAGS = flags.FLAGS
MODES = ("train", "score", "train_score", "figure1", "pool_selection", "merge_scores",
         "dynamic", "dynamic_sweep", "score_timing", "convert")
flags.DEFINE_enum("mode", "train", MODES, "What to run.")
flags.DEFINE_string("records_out", None, "--mode=convert: the new (or empty) output folder.")
flags.DEFINE_integer("records_shard_size", 10000, "--mode=convert: examples per shard.",
                     lower_bound=1)
flags.DEFINE_list("scores", ["el2n", "grand"], "Scores to compute in score modes: el2n, "
                  "l1_error, max_margin, sum_margin, top2_margin, entropy, loss, grand, "
                  "input_norm, forgetting; text also el2n_sum, el2n_mean, grand_head.")
flags.DEFINE_integer("score_step", None, "Checkpoint step to score (default: the last step).",
                     lower_bound=0)
flags.DEFINE_integer("score_batch_size", 128, "Examples per compiled scoring call.",
                     lower_bound=1)
flags.DEFINE_integer("grand_init_runs", 0, "Also compute GraNd at initialisation over this "
                     "many inits (model seeds 42 + r*424242), saved as "
                     "scores/grand_init/step_0.npy.",
                     lower_bound=0)

log = logging.getLogger("datadiet_jax")


def validate_flags() -> None:
  """Checks every flag value that needs no data (score names, methods, strategies, prune
  fractions, required flags, the workdir path); raises a user error (exit status 2).
  Writes nothing, loads nothing."""
  if not FLAGS.workdir:
    raise ValueError("--workdir is required (the folder where runs, scores and plots go)")
  common.check_workdir_path(FLAGS.workdir)
  common.optimizer_config_from_flags()  # --decay_epochs
  if FLAGS.mode in ("score", "train_score"):
    from datadiet_jax.scores.io import canonical_score_name
    for name in FLAGS.scores:
      canonical_score_name(name)
    if FLAGS.mode == "train_score":
      from datadiet_jax.train.dynamics import check_tracked
      check_tracked(FLAGS.scores, FLAGS.track_dynamics, "--scores")
    if not FLAGS.scores and not FLAGS.grand_init_runs:
      raise ValueError(f"--mode={FLAGS.mode} with --scores empty and --grand_init_runs=0 "
                       "scores nothing; name scores (e.g. --scores=el2n,grand)")
  studies.validate_flags()
  if FLAGS.example_ids_file and FLAGS.mode not in ("train", "score", "train_score"):
    raise ValueError(f"--example_ids_file trains a subset in --mode=train/score/train_score, "
                     f"not --mode={FLAGS.mode} (which picks its own subsets)")

def _validate_with_data(dataset, train) -> None:
  """The checks that need the dataset and the training config (still writing nothing)."""
  checkpointed = set(FLAGS.scores) - {"input_norm"}  # scores read from the runs' checkpoints
  step = train.num_steps if FLAGS.score_step is None else FLAGS.score_step
  if FLAGS.mode in ("score", "train_score") and checkpointed:
    common.check_score_step(step, train, dataset.num_train)
  if FLAGS.mode == "score" and checkpointed:
    from datadiet_jax.pipelines.score_runs import check_runs_trained
    check_runs_trained(os.path.abspath(FLAGS.workdir), range(FLAGS.num_runs), step)
  studies.validate_with_data(dataset, train)


def _setup(check=None):
  # Everything that can fail on bad input (flag values, data, model, a config that differs
  # from the workdir's) runs before flags.txt / run_info.json / train.log / config.json are
  # (re)written, so a failed command leaves an existing workdir untouched.
  validate_flags()
  dataset = common.load_dataset_from_flags()
  model = common.model_from_flags(dataset.num_classes, dataset)
  optimizer = common.optimizer_config_from_flags()
  example_ids = common.example_ids_from_flags(dataset.num_train)  # --example_ids_file
  train = common.train_config_from_flags(
      dataset.num_train if example_ids is None else len(example_ids))
  _validate_with_data(dataset, train)
  extra = check(dataset, train) if check is not None else None  # a mode's own checks
  config = run_config(dataset, FLAGS.model, FLAGS.num_filters, FLAGS.dtype, optimizer, train,
                      common.seeds_from_flags().record(),
                      label_noise={"fraction": FLAGS.label_noise_fraction,
                                   "seed": FLAGS.label_noise_seed},
                      **common.model_record(model))
  if extra:
    config.update(extra)
  if example_ids is not None:  # recorded only when given: older workdirs still resume
    config["example_ids"] = {"num": int(len(example_ids)),
                             "sha256": hashlib.sha256(example_ids.tobytes()).hexdigest()}
  workdir = os.path.abspath(FLAGS.workdir)
  check_config(workdir, config, write=False)
  workdir = common.setup_workdir()
  check_config(workdir, config)
  log.info("dataset %s: %d train / %d test, %d classes, inputs %s", dataset.name,
           dataset.num_train, dataset.num_test, dataset.num_classes, dataset.input_spec)
  return workdir, dataset, model, optimizer, train


def run_train(setup=None) -> None:
  workdir, dataset, model, optimizer, train = setup or _setup()
  worker = sweep.worker_from_flags()
  results = train_runs(workdir, worker.share(range(FLAGS.num_runs)), common.run_seeds, model,
                       dataset, optimizer, train, progress=FLAGS.progress,
                       example_ids=common.example_ids_from_flags(dataset.num_train),
                       stop_after_step=FLAGS.stop_after_step, mesh=common.mesh_from_flags(),
                       lock_label=worker.label, ensemble_members=FLAGS.ensemble_members,
                       ensemble_strategy=FLAGS.ensemble_strategy)
  for result in results:
    log.info("%s: step %d, test accuracy %.4f, %s (%s)", os.path.basename(result.run_dir),
             result.final_step, result.test_accuracy, result.outcome, result.run_dir)
  common.exit_if_diverged(results)


def score_config_from_flags():
  from datadiet_jax.pipelines.score_runs import ScoreStageConfig
  return ScoreStageConfig(tuple(FLAGS.scores), FLAGS.score_step, FLAGS.score_batch_size,
                          FLAGS.grand_init_runs)


def _restore_check(dataset, train) -> None:
  """--mode=score: every run's checkpoint at the score step restores (checksums checked),
  before _setup writes flags.txt / run_info.json / train.log (CheckpointError otherwise)."""
  from datadiet_jax.pipelines.score_runs import check_runs_restore
  config = score_config_from_flags()
  if config.checkpointed:
    check_runs_restore(os.path.abspath(FLAGS.workdir), range(FLAGS.num_runs),
                       common.run_seeds, common.model_from_flags(dataset.num_classes, dataset),
                       dataset, common.optimizer_config_from_flags(), train, config)


def run_score(setup=None) -> None:
  from datadiet_jax.pipelines.score_runs import score_stage
  workdir, dataset, model, optimizer, train = setup or _setup(
      _restore_check if FLAGS.mode == "score" else None)
  # --distributed: the program's processes split the examples (sweep/processes.py).
  from datadiet_jax.sweep.processes import process_worker
  worker = process_worker() or sweep.worker_from_flags()
  score_stage(workdir, range(FLAGS.num_runs), common.run_seeds, dataset, model, optimizer,
              train, score_config_from_flags(), FLAGS.progress, worker)


def run_merge_scores() -> None:
  from datadiet_jax.scores.shards import check_score_shards, merge_score_shards

  def check(dataset, train):  # every score's shards complete and alike, before any write
    step = train.num_steps if FLAGS.score_step is None else FLAGS.score_step
    for name in FLAGS.scores:
      check_score_shards(os.path.abspath(FLAGS.workdir), name, step)

  workdir, dataset, model, optimizer, train = _setup(check)
  step = train.num_steps if FLAGS.score_step is None else FLAGS.score_step
  for name in FLAGS.scores:
    path = merge_score_shards(workdir, name, step)
    log.info("scores %s@%d merged -> %s", name, step, path)
    print(path)

def run_convert() -> None:
  from datadiet_jax.data import records
  if not FLAGS.records_out:
    raise ValueError("--mode=convert needs --records_out (a new or empty folder)")
  if FLAGS.dataset == "image_folder" and FLAGS.data_dir and FLAGS.train_per_class is None:
    # One image in memory at a time: folders larger than memory convert too.
    manifest = records.convert_image_folder(
        FLAGS.data_dir, FLAGS.records_out, sort_by_class=FLAGS.sort_by_class,
        shard_size=FLAGS.records_shard_size, progress=FLAGS.progress)
  else:
    convert = records.convert_text_dataset if common.is_text() else records.convert_dataset
    manifest = convert(common.load_dataset_from_flags(), FLAGS.records_out,
                       FLAGS.records_shard_size, FLAGS.progress)
  counts = {k: v["num_examples"] for k, v in manifest["splits"].items()}
  print(f"wrote {counts} examples to {FLAGS.records_out}")


def run_train_score() -> None:
  setup = _setup()
  run_train(setup)
  run_score(setup)


def parse_flags(argv):
  """absl's flag parsing, with a parse error (unknown flag, bad value, missing flagfile)
  reported as one line and exit status 2, like every other user error."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    message = " ".join(str(error).replace("ERROR:: ", "").split())
    print(f"error: {message} (see --helpfull)", file=sys.stderr)
    sys.exit(common.EXIT_USER_ERROR)


def main(argv) -> None:
  common.setup_logging()
  try:
    if len(argv) > 1:
      raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}; every setting is a "
                       "--flag=value")
    sweep.worker_from_flags()  # checks --worker_index < --num_workers before anything runs
    if FLAGS.distributed and FLAGS.num_workers > 1 and FLAGS.mode in ("score", "train_score"):
      raise ValueError(f"--num_workers={FLAGS.num_workers} with --distributed "
                       f"--mode={FLAGS.mode}: the program's processes split the examples "
                       "themselves (process i scores shard i); drop --num_workers/--worker_index")
    from datadiet_jax.train.dynamics import check_names
    check_names(FLAGS.track_dynamics, FLAGS.dynamics_window)  # before anything is written
    if FLAGS.distributed:
      sweep.initialize_distributed()
    if FLAGS.mode in studies.MODES:
      studies.MODES[FLAGS.mode](_setup)
    else:
      {"train": run_train, "score": run_score, "train_score": run_train_score,
       "merge_scores": run_merge_scores, "convert": run_convert}[FLAGS.mode]()
  except common.RunsDivergedError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(common.EXIT_DIVERGED)
  except common.USER_ERRORS as error:
    print(f"error: {common.user_error_message(error)}", file=sys.stderr)
    sys.exit(common.EXIT_USER_ERROR)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
