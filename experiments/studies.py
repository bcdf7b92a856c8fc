"""Flags and modes of the multi-run studies (experiments/cifar.py dispatches to them):
figure1, score_timing, pool_selection, dynamic, dynamic_sweep. Each mode translates its
flags into the pipeline's config (datadiet_jax/pipelines/) and calls the pipeline; `setup`
is cifar's flag checks + data + model + workdir (a mode's own checks passed to it).
"""

from __future__ import annotations

from absl import flags

from experiments import common, sweep

FLAGS = flags.FLAGS

# Figure 1.
flags.DEFINE_list("methods", ["random", "el2n:hardest", "grand_init:hardest",
                              "input_norm:hardest"],
                  "figure1 methods: 'random' or <score>:<strategy>, score in el2n, grand, "
                  "grand_init, forgetting, input_norm, entropy, ...; strategy in hardest, "
                  "easiest, offset, class_balanced, ccs, d2 (D2 pruning on the score "
                  "runs' features with that difficulty score; plain 'd2' = el2n:d2); "
                  "'moderate': Moderate-DS on the score runs' features; 'rs2': a fresh "
                  "random slice of each fraction's size every epoch (RS2 without "
                  "replacement), the same steps as the static subsets. Scores aum, "
                  "dyn_unc, dual, tdds need --track_dynamics.")
flags.DEFINE_integer("d2_neighbors", 5, "figure1 d2 methods: k of the kNN feature graph.")
flags.DEFINE_float("d2_gamma_forward", 1.0, "figure1 d2 methods: forward message weight "
                   "exp(-gamma_f * distance), > 0.")
flags.DEFINE_float("d2_gamma_reverse", 0.1, "figure1 d2 methods: reverse message weight "
                   "exp(-gamma_r * distance), > 0.")
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
# Score timing (--mode=score_timing) and pool selection (--mode=pool_selection).
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
                    "each re-scoring), 'rs2' (RS2 without replacement: the next chunk of a "
                    "per-pass random permutation at each re-scoring) or 'infobatch' (soft "
                    "pruning).")
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
                  "dynamic_sweep: methods (also dynamic_entropy, and rs2: RS2 without "
                  "replacement, a new round every epoch from epoch 0).")
flags.DEFINE_list("dynamic_keep_fractions", ["0.3", "0.5", "0.7"], "dynamic_sweep: keep "
                  "fractions of the re-scoring methods.")
flags.DEFINE_list("infobatch_ratios", ["0.3", "0.5", "0.7"], "dynamic_sweep: InfoBatch r.")
flags.DEFINE_bool("dynamic_report_only", False, "dynamic_sweep: train nothing; write the "
                  "table and plot from the runs finished so far.")


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
      offset_fraction=FLAGS.offset_fraction, score_batch_size=FLAGS.score_batch_size,
      d2_neighbors=FLAGS.d2_neighbors, d2_gamma_forward=FLAGS.d2_gamma_forward,
      d2_gamma_reverse=FLAGS.d2_gamma_reverse)


def run_figure1(setup) -> None:
  from datadiet_jax.pipelines.figure1 import run_figure1 as figure1
  workdir, dataset, model, optimizer, train = setup()
  config = figure1_config_from_flags()
  out = figure1(workdir, dataset, model, optimizer, train, config, common.run_seeds,
                FLAGS.progress, common.mesh_from_flags(), FLAGS.label_noise_fraction,
                FLAGS.label_noise_seed, report_only=FLAGS.figure1_report_only,
                worker=sweep.worker_from_flags(), ensemble_members=FLAGS.ensemble_members,
                ensemble_strategy=FLAGS.ensemble_strategy)
  print(open(out["paths"]["markdown"]).read())
  print(f"\nresults: {out['paths']['markdown']}\nplot:    {out['paths']['plot']}\n"
        f"scores:  {out['paths']['correlations_plot']}")


def run_score_timing_mode(setup) -> None:
  """--mode=score_timing (datadiet_jax/pipelines/score_timing.py): the figure-1 score runs scored at
  --score_timing_points epochs; Spearman vs the last, kept class balance, retraining."""
  from datadiet_jax.pipelines.score_timing import (ScoreTimingConfig, point_steps,
                                                   run_score_timing)
  points = _floats("score_timing_points")
  holder = {}

  def check(dataset, train):
    point_steps(points, dataset.num_train // train.batch_size)
    holder["timing"] = timing = ScoreTimingConfig(points, tuple(FLAGS.score_timing_scores),
                                                  FLAGS.score_timing_prune_fraction)
    return {"score_timing": {"points": list(timing.points), "scores": list(timing.scores),
                             "prune_fraction": timing.prune_fraction}}

  FLAGS.score_step = FLAGS.score_step or 1  # replaced by each point's step
  config = figure1_config_from_flags()
  workdir, dataset, model, optimizer, train = setup(check)
  out = run_score_timing(workdir, dataset, model, optimizer, train, config, holder["timing"],
                         common.run_seeds, FLAGS.progress, worker=sweep.worker_from_flags())
  print(open(out["paths"]["markdown"]).read())
  print(f"\nresults: {out['paths']['markdown']}\nplot:    {out['paths']['plot']}")


def run_pool_selection_mode(setup) -> None:
  from datadiet_jax.pipelines.pool_selection import (PoolSelectionConfig, run_pool_selection,
                                                     split_base_and_pool)
  workdir, dataset, model, optimizer, train = setup()
  base_ids, pool_ids = split_base_and_pool(dataset.train_labels, FLAGS.pool_base_per_class,
                                           FLAGS.pool_size, FLAGS.pool_seed)
  config = PoolSelectionConfig(FLAGS.pool_k, FLAGS.pool_score, FLAGS.num_seeds,
                               FLAGS.score_batch_size)
  out = run_pool_selection(workdir, dataset, model, optimizer, train, base_ids, pool_ids,
                           config, common.run_seeds, progress=FLAGS.progress,
                           mesh=common.mesh_from_flags(), worker=sweep.worker_from_flags())
  print(open(out["paths"]["markdown"]).read())
  print(f"results: {out['paths']['markdown']}\n         {out['paths']['csv']}")


def _floats(name: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in FLAGS[name].value)
  except ValueError as error:
    raise ValueError(f"--{name} must be numbers, got {FLAGS[name].value}") from error


def _num_epochs(dataset, train) -> int:
  return train.num_steps // (dataset.num_train // train.batch_size)


def dynamic_config_from_flags():
  from datadiet_jax.pipelines.dynamic_runs import DynamicRunsConfig
  return common.config_from_flags(DynamicRunsConfig, **{
      name: f"dynamic_{name}" for name in ("method", "keep_fraction", "warmup_epochs",
                                           "rescore_every", "strategy", "ema_alpha",
                                           "ema_std_k", "budget")})


def run_dynamic_mode(setup) -> None:
  from datadiet_jax.pipelines.dynamic_runs import train_dynamic_runs

  def check(dataset, train):
    return {"dynamic": dynamic_config_from_flags().record(_num_epochs(dataset, train))}

  workdir, dataset, model, optimizer, train = setup(check)
  worker = sweep.worker_from_flags()
  train_dynamic_runs(workdir, worker.share(range(FLAGS.num_runs)), common.run_seeds, model,
                     dataset, optimizer, train, dynamic_config_from_flags(), FLAGS.progress,
                     FLAGS.stop_after_step, common.mesh_from_flags(), worker)


def run_dynamic_sweep_mode(setup) -> None:
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

  workdir, dataset, model, optimizer, train = setup(check)
  out = run_dynamic_sweep(workdir, dataset, model, optimizer, train, holder["config"],
                          common.run_seeds, FLAGS.progress,
                          report_only=FLAGS.dynamic_report_only,
                          stop_after_step=FLAGS.stop_after_step, mesh=common.mesh_from_flags(),
                          worker=sweep.worker_from_flags())
  print(open(out["paths"]["markdown"]).read())
  print(f"\nresults: {out['paths']['markdown']}\nplot:    {out['paths']['plot']}")


def validate_flags() -> None:
  """The studies' flag checks that need no data (raise a user error, write nothing)."""
  if FLAGS.mode == "figure1":
    figure1_config_from_flags()
    from datadiet_jax.train.dynamics import check_tracked
    check_tracked(FLAGS.figure1_scores, FLAGS.track_dynamics, "--figure1_scores")
  if FLAGS.mode == "pool_selection":
    missing = [f"--{name}" for name in ("pool_base_per_class", "pool_size", "pool_k")
               if FLAGS[name].value is None]
    if missing:
      raise ValueError(f"--mode=pool_selection needs {', '.join(missing)}")
    if not FLAGS.num_steps:
      raise ValueError("--mode=pool_selection needs --num_steps (the step budget of every "
                       "run; lr-schedule epochs count epochs of the base set)")


def validate_with_data(dataset, train) -> None:
  """--mode=figure1: every pruned subset holds at least a batch; the score files it reads
  (all for a report; any that exists: readable, of this dataset's length, free of NaN)."""
  if FLAGS.mode == "figure1":
    from datadiet_jax.pipelines.figure1 import check_score_files, check_subset_sizes
    config = figure1_config_from_flags()
    check_subset_sizes(config, dataset.num_train, train.batch_size)
    check_score_files(FLAGS.workdir, config, dataset.num_train,
                      require_all=FLAGS.figure1_report_only)


MODES = {"figure1": run_figure1, "pool_selection": run_pool_selection_mode,
         "dynamic": run_dynamic_mode, "dynamic_sweep": run_dynamic_sweep_mode,
         "score_timing": run_score_timing_mode}
