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

from experiments import common, sweep
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
# Figure 1.
flags.DEFINE_list("methods", ["random", "el2n:hardest", "grand_init:hardest",
                              "input_norm:hardest"],
                  "figure1 methods: 'random' or <score>:<strategy>, score in el2n, grand, "
                  "grand_init, forgetting, input_norm, entropy, ...; strategy in hardest, "
                  "easiest, offset, class_balanced, ccs.")
flags.DEFINE_list("prune_fractions", ["0.3", "0.5"], "figure1: fractions of the data pruned.")
flags.DEFINE_list("figure1_scores", ["el2n", "grand", "grand_init", "forgetting", "input_norm"],
                  "figure1: scores to compute (for the methods and the correlation heatmap).")
flags.DEFINE_integer("score_runs", 4, "figure1: runs averaged for model-based scores.",
                     lower_bound=1)
flags.DEFINE_integer("score_train_steps", None, "figure1: how long score runs train "
                     "(default: --score_step; forgetting is read at this step).", lower_bound=1)
flags.DEFINE_integer("num_seeds", 1, "figure1: seeds trained per method and fraction.",
                     lower_bound=1)
flags.DEFINE_bool("include_full", True, "figure1: also train on the full data.")
flags.DEFINE_enum("budget", "steps", ["steps", "epochs"], "figure1: subsets train the full "
                  "run's number of steps (the original) or its number of epochs.")
flags.DEFINE_float("offset_fraction", 0.1, "figure1 offset strategy: skip this fraction of "
                   "the hardest examples.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_float("label_noise_fraction", 0.0, "Corrupt this fraction of train labels "
                   "(seeded permutation, recorded in label_noise.npz).", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_integer("label_noise_seed", 0, "Seed of the label noise.")
flags.DEFINE_bool("figure1_report_only", False, "figure1: train nothing; write the table and "
                  "plots from the runs finished so far (e.g. while the sweep runs elsewhere).")
# Pool selection (--mode=pool_selection).
flags.DEFINE_list("score_timing_points", ["0.05", "0.25", "0.5", "1", "2"], "score_timing: "
                  "points of the score runs to score, in epochs (rounded to multiples of the "
                  "first point's step).")
flags.DEFINE_list("score_timing_scores", ["el2n"], "score_timing: the scores taken at every "
                  "point (each retrained keep-hardest, paired with random), e.g. el2n,grand_head.")
flags.DEFINE_float("score_timing_prune_fraction", 0.5, "score_timing: fraction pruned.")
flags.DEFINE_integer("pool_base_per_class", None, "pool_selection: base-set examples per "
                     "class.", lower_bound=1)
flags.DEFINE_integer("pool_size", None, "pool_selection: candidate pool size, drawn "
                     "uniformly from the rest of the training set.", lower_bound=1)
flags.DEFINE_integer("pool_k", None, "pool_selection: pool examples added.", lower_bound=1)
flags.DEFINE_enum("pool_score", "entropy", ["entropy", "el2n"], "pool_selection: the score "
                  "whose top --pool_k pool examples are added.")
flags.DEFINE_integer("pool_seed", 0, "pool_selection: seed of the base/pool split.",
                     lower_bound=0)

# Dynamic pruning (--mode=dynamic, --mode=dynamic_sweep). Ranges are checked by the
# configs (one clear line, exit 2), not by absl bounds.
flags.DEFINE_string("dynamic_method", "el2n", "dynamic: the re-scoring score (el2n, loss, "
                    "entropy, l1_error, margins, grand), 'random' (a fresh random subset at "
                    "each re-scoring) or 'infobatch' (soft pruning).")
flags.DEFINE_integer("dynamic_warmup_epochs", 1, "Epochs on all data before the first "
                     "re-scoring (must be fewer than the run's epochs).")
flags.DEFINE_integer("dynamic_rescore_every", 1, "Epochs between re-scorings (>= 1).")
flags.DEFINE_float("dynamic_keep_fraction", 0.5, "Fraction of the training set kept after "
                   "each re-scoring, in (0, 1].")
flags.DEFINE_string("dynamic_strategy", "hardest", "Selection at each re-scoring: hardest, "
                    "easiest, offset (--offset_fraction), class_balanced, random.")
flags.DEFINE_float("dynamic_ema_alpha", 1.0, "Weight of the newest scoring in the score "
                   "EMA, in (0, 1]; 1 = latest scores only (NLU setting: 0.8).")
flags.DEFINE_float("dynamic_ema_std_k", 0.0, "Add k x the running std of the scores (NLU "
                   "setting: 1.0).")
flags.DEFINE_float("infobatch_r", 0.5, "InfoBatch: probability of dropping a below-mean-loss "
                   "example, in [0, 1).")
flags.DEFINE_float("infobatch_delta", 0.875, "InfoBatch: prune during this fraction of the "
                   "epochs, in (0, 1]; the rest use all data.")
flags.DEFINE_string("dynamic_budget", "epochs", "'epochs': train --num_epochs epochs whose "
                    "length follows the subset (fewer steps = time saved); 'steps': keep the "
                    "full run's step budget.")
flags.DEFINE_list("dynamic_sweep_methods", ["full", "static_el2n", "dynamic_el2n",
                                            "dynamic_loss", "dynamic_random", "infobatch"],
                  "dynamic_sweep: methods (also dynamic_entropy).")
flags.DEFINE_list("dynamic_keep_fractions", ["0.3", "0.5", "0.7"], "dynamic_sweep: keep "
                  "fractions of the re-scoring methods.")
flags.DEFINE_list("infobatch_ratios", ["0.3", "0.5", "0.7"], "dynamic_sweep: InfoBatch r.")
flags.DEFINE_bool("dynamic_report_only", False, "dynamic_sweep: train nothing; write the "
                  "table and plot from the runs finished so far.")

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
    if not FLAGS.scores and not FLAGS.grand_init_runs:
      raise ValueError(f"--mode={FLAGS.mode} with --scores empty and --grand_init_runs=0 "
                       "scores nothing; name scores (e.g. --scores=el2n,grand)")
  if FLAGS.mode == "figure1":
    figure1_config_from_flags()
  if FLAGS.example_ids_file and FLAGS.mode not in ("train", "score", "train_score"):
    raise ValueError(f"--example_ids_file trains a subset in --mode=train/score/train_score, "
                     f"not --mode={FLAGS.mode} (which picks its own subsets)")
  if FLAGS.mode == "pool_selection":
    missing = [f"--{name}" for name in ("pool_base_per_class", "pool_size", "pool_k")
               if FLAGS[name].value is None]
    if missing:
      raise ValueError(f"--mode=pool_selection needs {', '.join(missing)}")
    if not FLAGS.num_steps:
      raise ValueError("--mode=pool_selection needs --num_steps (the step budget of every "
                       "run; lr-schedule epochs count epochs of the base set)")


def figure1_config_from_flags():
  """The Figure1Config of the flags (raises a user error for a bad method, score or
  fraction)."""
  from datadiet_jax.pipelines.figure1 import Figure1Config, parse_method
  if FLAGS.score_step is None:
    raise ValueError("--score_step is required for --mode=figure1 (e.g. 20 epochs of steps)")
  try:
    fractions = tuple(float(f) for f in FLAGS.prune_fractions)
  except ValueError as error:
    raise ValueError(f"--prune_fractions must be numbers, got {FLAGS.prune_fractions}") from error
  return Figure1Config(
      methods=tuple(parse_method(m) for m in FLAGS.methods), prune_fractions=fractions,
      score_names=tuple(FLAGS.figure1_scores), num_score_runs=FLAGS.score_runs,
      score_step=FLAGS.score_step,
      score_train_steps=FLAGS.score_train_steps or FLAGS.score_step,
      grand_init_runs=FLAGS.grand_init_runs or 8, num_seeds=FLAGS.num_seeds,
      include_full=FLAGS.include_full, budget=FLAGS.budget,
      offset_fraction=FLAGS.offset_fraction, score_batch_size=FLAGS.score_batch_size)


def _validate_with_data(dataset, train) -> None:
  """The checks that need the dataset and the training config (still writing nothing)."""
  checkpointed = set(FLAGS.scores) - {"input_norm"}  # scores read from the runs' checkpoints
  step = train.num_steps if FLAGS.score_step is None else FLAGS.score_step
  if FLAGS.mode in ("score", "train_score") and checkpointed:
    common.check_score_step(step, train, dataset.num_train)
  if FLAGS.mode == "score" and checkpointed:
    from datadiet_jax.pipelines.train_runs import run_dir
    from datadiet_jax.pipelines.score_runs import check_not_diverged
    from datadiet_jax.train.loop import run_paths
    workdir = os.path.abspath(FLAGS.workdir)
    for run in range(FLAGS.num_runs):
      if not os.path.isdir(run_paths(run_dir(workdir, run))["checkpoints"]):
        raise ValueError(f"--mode=score: run {run} was never trained in {workdir} (no "
                         f"{run_paths(run_dir(workdir, run))['checkpoints']}); train it first "
                         "(--mode=train or --mode=train_score with the same flags)")
    check_not_diverged([run_dir(workdir, r) for r in range(FLAGS.num_runs)], step)
  if FLAGS.mode == "figure1":
    # Score files the figure reads: all must exist for a report; any that exists already
    # must be readable, of this dataset's length and free of NaN.
    from datadiet_jax.pipelines.figure1 import score_file
    from datadiet_jax.scores import load_scores
    from datadiet_jax.scores.io import score_paths
    config = figure1_config_from_flags()
    for name in config.score_names:
      if FLAGS.figure1_report_only or os.path.exists(
          score_paths(FLAGS.workdir, *score_file(name, config))["mean"]):
        load_scores(FLAGS.workdir, *score_file(name, config), dataset.num_train)


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
                      {"model_seed": FLAGS.model_seed, "data_seed": FLAGS.data_seed,
                       "seed_stride": FLAGS.seed_stride},
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


def _restore_check(dataset, train) -> None:
  """--mode=score: every run's checkpoint at the score step restores (checksums checked),
  before _setup writes flags.txt / run_info.json / train.log (CheckpointError otherwise)."""
  from datadiet_jax.pipelines.train_runs import run_dir
  from datadiet_jax.scores.checkpoints import load_variables
  from datadiet_jax.train.loop import build_run, run_paths
  if not set(FLAGS.scores) - {"input_norm"}:
    return None
  step = train.num_steps if FLAGS.score_step is None else FLAGS.score_step
  model = common.model_from_flags(dataset.num_classes, dataset)
  state_like, _, _, _ = build_run(model, dataset, common.optimizer_config_from_flags(), train,
                                  *common.run_seeds(0))
  for run in range(FLAGS.num_runs):
    load_variables(run_paths(run_dir(os.path.abspath(FLAGS.workdir), run))["checkpoints"],
                   step, state_like)
  return None


def run_score(setup=None) -> None:
  workdir, dataset, model, optimizer, train = setup or _setup(
      _restore_check if FLAGS.mode == "score" else None)
  from datadiet_jax.pipelines.score_runs import score_grand_at_init, score_runs
  from datadiet_jax.pipelines.train_runs import run_dir
  from datadiet_jax.train.loop import build_run
  runs = range(FLAGS.num_runs)
  step = train.num_steps if FLAGS.score_step is None else FLAGS.score_step
  model_scores = [s for s in FLAGS.scores]
  if model_scores:
    seeds = [common.run_seeds(r) for r in runs]
    state_like, _, _, _ = build_run(model, dataset, optimizer, train, *seeds[0])
    score_runs(workdir, [run_dir(workdir, r) for r in runs], seeds, dataset, model, state_like,
               step, model_scores, FLAGS.score_batch_size, FLAGS.progress,
               sweep.worker_from_flags(),
               tensorboard=train.tensorboard)
  if FLAGS.grand_init_runs:
    model_seeds = [common.run_seeds(r)[0] for r in range(FLAGS.grand_init_runs)]
    score_grand_at_init(workdir, dataset, model, model_seeds, FLAGS.score_batch_size,
                        FLAGS.progress, sweep.worker_from_flags(),
                        tensorboard=train.tensorboard)


def run_figure1() -> None:
  from datadiet_jax.pipelines.figure1 import run_figure1 as figure1
  workdir, dataset, model, optimizer, train = _setup()
  config = figure1_config_from_flags()
  out = figure1(workdir, dataset, model, optimizer, train, config, common.run_seeds,
                FLAGS.progress, common.mesh_from_flags(), FLAGS.label_noise_fraction,
                FLAGS.label_noise_seed, report_only=FLAGS.figure1_report_only,
                worker=sweep.worker_from_flags(), ensemble_members=FLAGS.ensemble_members,
                ensemble_strategy=FLAGS.ensemble_strategy)
  print(open(out["paths"]["markdown"]).read())
  print(f"\nresults: {out['paths']['markdown']}\nplot:    {out['paths']['plot']}\n"
        f"scores:  {out['paths']['correlations_plot']}")


def run_score_timing_mode() -> None:
  """--mode=score_timing (datadiet_jax/pipelines/score_timing.py): the figure-1 score runs scored at
  --score_timing_points epochs; Spearman vs the last, kept class balance, retraining."""
  from datadiet_jax.pipelines.score_timing import point_steps, run_score_timing
  points = _floats("score_timing_points")

  def check(dataset, train):
    point_steps(points, dataset.num_train // train.batch_size)
    if not 0 < FLAGS.score_timing_prune_fraction < 1:
      raise ValueError("--score_timing_prune_fraction must lie in (0, 1)")
    return {"score_timing": {"points": list(points), "scores": list(FLAGS.score_timing_scores),
                             "prune_fraction": FLAGS.score_timing_prune_fraction}}

  FLAGS.score_step = FLAGS.score_step or 1  # replaced by each point's step
  config = figure1_config_from_flags()
  workdir, dataset, model, optimizer, train = _setup(check)
  out = run_score_timing(workdir, dataset, model, optimizer, train, config, points,
                         common.run_seeds, FLAGS.score_timing_scores,
                         FLAGS.score_timing_prune_fraction, FLAGS.progress,
                         worker=sweep.worker_from_flags())
  print(open(out["paths"]["markdown"]).read())
  print(f"\nresults: {out['paths']['markdown']}\nplot:    {out['paths']['plot']}")


def run_pool_selection_mode() -> None:
  from datadiet_jax.pipelines.pool_selection import run_pool_selection, split_base_and_pool
  workdir, dataset, model, optimizer, train = _setup()
  base_ids, pool_ids = split_base_and_pool(dataset.train_labels, FLAGS.pool_base_per_class,
                                           FLAGS.pool_size, FLAGS.pool_seed)
  out = run_pool_selection(workdir, dataset, model, optimizer, train, base_ids, pool_ids,
                           FLAGS.pool_k, FLAGS.pool_score, common.run_seeds,
                           num_seeds=FLAGS.num_seeds, progress=FLAGS.progress,
                           score_batch_size=FLAGS.score_batch_size,
                           mesh=common.mesh_from_flags(), worker=sweep.worker_from_flags())
  print(open(out["paths"]["markdown"]).read())
  print(f"results: {out['paths']['markdown']}\n         {out['paths']['csv']}")


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


def _floats(name: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in FLAGS[name].value)
  except ValueError as error:
    raise ValueError(f"--{name} must be numbers, got {FLAGS[name].value}") from error


def _num_epochs(dataset, train) -> int:
  return train.num_steps // (dataset.num_train // train.batch_size)


def _dynamic_policy(dataset, train, model=None, seed: int = 0):
  """The policy of --dynamic_method (validated; model None: only check the flags)."""
  from datadiet_jax.prune.dynamic import DynamicConfig, make_dynamic_policy
  from datadiet_jax.prune.soft import InfoBatchConfig, InfoBatchPolicy
  if FLAGS.dynamic_budget not in ("epochs", "steps"):
    raise ValueError(f"--dynamic_budget={FLAGS.dynamic_budget!r}: use 'epochs' or 'steps'")
  epochs = _num_epochs(dataset, train)
  if FLAGS.dynamic_method == "infobatch":
    config = InfoBatchConfig(FLAGS.infobatch_r, FLAGS.infobatch_delta, max(epochs, 1), seed)
    return config, (None if model is None else InfoBatchPolicy(config, dataset.num_train))
  config = DynamicConfig(FLAGS.dynamic_method, FLAGS.dynamic_keep_fraction,
                         FLAGS.dynamic_warmup_epochs, FLAGS.dynamic_rescore_every,
                         FLAGS.dynamic_strategy, FLAGS.dynamic_ema_alpha,
                         FLAGS.dynamic_ema_std_k, FLAGS.offset_fraction, seed,
                         FLAGS.score_batch_size)
  config.check_training(epochs)
  return config, (None if model is None else make_dynamic_policy(config, model, dataset))


def run_dynamic_mode() -> None:
  import dataclasses
  from datadiet_jax.pipelines.dynamic_sweep import run_train_config
  from datadiet_jax.sweep import lock as run_lock
  from datadiet_jax.train.loop import train_run
  from datadiet_jax.pipelines.train_runs import run_dir

  def check(dataset, train):
    config, _ = _dynamic_policy(dataset, train)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}
    return {"dynamic": {"method": FLAGS.dynamic_method, "budget": FLAGS.dynamic_budget,
                        **settings}}  # the seed is each run's data seed

  workdir, dataset, model, optimizer, train = _setup(check)
  epochs = _num_epochs(dataset, train)
  worker = sweep.worker_from_flags()
  for run in worker.share(range(FLAGS.num_runs)):
    model_seed, data_seed = common.run_seeds(run)
    _, policy = _dynamic_policy(dataset, train, model, data_seed)
    run_train = run_train_config(train, policy, epochs, FLAGS.dynamic_budget,
                                 dataset.num_train)
    desc = f"{FLAGS.dynamic_method} run {run}"
    try:
      result = train_run(run_dir(workdir, run), model, dataset, optimizer, run_train,
                         model_seed, data_seed, progress=FLAGS.progress,
                         stop_after_step=FLAGS.stop_after_step, desc=desc,
                         mesh=common.mesh_from_flags(), policy=policy,
                         num_epochs=epochs if FLAGS.dynamic_budget == "epochs" else None,
                         lock_label=worker.label)
    except run_lock.RunLockedError as error:
      log.info("%s: skipped, %s is training it", desc, run_lock.describe(error.holder))
      continue
    log.info("run %d: step %d, test accuracy %.4f (%s)", run, result.final_step,
             result.test_accuracy, result.run_dir)


def run_dynamic_sweep_mode() -> None:
  import dataclasses
  from datadiet_jax.pipelines.dynamic_sweep import DynamicSweepConfig, run_dynamic_sweep
  holder = {}

  def check(dataset, train):
    holder["config"] = DynamicSweepConfig(
        num_epochs=_num_epochs(dataset, train), methods=tuple(FLAGS.dynamic_sweep_methods),
        keep_fractions=_floats("dynamic_keep_fractions"),
        infobatch_ratios=_floats("infobatch_ratios"), num_seeds=FLAGS.num_seeds,
        warmup_epochs=FLAGS.dynamic_warmup_epochs, rescore_every=FLAGS.dynamic_rescore_every,
        strategy=FLAGS.dynamic_strategy, ema_alpha=FLAGS.dynamic_ema_alpha,
        ema_std_k=FLAGS.dynamic_ema_std_k, infobatch_delta=FLAGS.infobatch_delta,
        budget=FLAGS.dynamic_budget, score_batch_size=FLAGS.score_batch_size)
    # Cells and seeds may grow between calls; the settings of every run may not.
    grows = ("num_seeds", "methods", "keep_fractions", "infobatch_ratios")
    return {"dynamic_sweep": {k: v for k, v in dataclasses.asdict(holder["config"]).items()
                              if k not in grows}}

  workdir, dataset, model, optimizer, train = _setup(check)
  out = run_dynamic_sweep(workdir, dataset, model, optimizer, train, holder["config"],
                          common.run_seeds, FLAGS.progress,
                          report_only=FLAGS.dynamic_report_only,
                          stop_after_step=FLAGS.stop_after_step, mesh=common.mesh_from_flags(),
                          worker=sweep.worker_from_flags())
  print(open(out["paths"]["markdown"]).read())
  print(f"\nresults: {out['paths']['markdown']}\nplot:    {out['paths']['plot']}")


def run_convert() -> None:
  from datadiet_jax.data import records
  if not FLAGS.records_out:
    raise ValueError("--mode=convert needs --records_out (a new or empty folder)")
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
    if FLAGS.distributed:
      sweep.initialize_distributed()
    {"train": run_train, "score": run_score, "train_score": run_train_score,
     "figure1": run_figure1, "pool_selection": run_pool_selection_mode,
     "merge_scores": run_merge_scores, "dynamic": run_dynamic_mode,
     "dynamic_sweep": run_dynamic_sweep_mode,
     "score_timing": run_score_timing_mode, "convert": run_convert}[FLAGS.mode]()
  except common.RunsDivergedError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(common.EXIT_DIVERGED)
  except common.USER_ERRORS as error:
    print(f"error: {common.user_error_message(error)}", file=sys.stderr)
    sys.exit(common.EXIT_USER_ERROR)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
