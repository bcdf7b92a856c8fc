"""Dynamic data pruning: the weighted train step, periodic re-scoring (NLU on Data Diets),
InfoBatch soft pruning, exact resume, compute accounting and the CLI's bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datadiet_jax.prune.dynamic import DynamicConfig, make_dynamic_policy
from datadiet_jax.prune.soft import (InfoBatchConfig, InfoBatchPolicy, InfoBatchState,
                                     plan_infobatch_epoch, well_learned)
from datadiet_jax.train import loop
from datadiet_jax.train.loop import TrainConfig, restore_run_state, train_run
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import create_train_state, model_variables
from datadiet_jax.train.step import make_train_step
from datadiet_jax.train.subset import load_policy_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
OPTIMIZER = OptimizerConfig(learning_rate=0.05, decay_epochs=(3,))


def _train_config(digits, epochs, save_steps=0):
  return TrainConfig(num_steps=epochs * (digits.num_train // BATCH), batch_size=BATCH,
                     eval_every_steps=-1, save_steps=save_steps, augment=False,
                     track_forgetting=False)


# ------------------------------------------------------------------------------ the step

def test_all_ones_weights_are_bit_identical_to_the_unweighted_step(digits, model):
  tx = make_optimizer(OPTIMIZER, 10)
  step = jax.jit(make_train_step(model, tx, digits.mean, digits.std, augment=False))
  state = create_train_state(model, tx, 0, 1, digits.image_shape)
  ids = np.arange(BATCH, dtype=np.int32) * 7
  batch = {"images": digits.train_images[ids], "labels": digits.train_labels[ids],
           "example_ids": ids}
  plain, plain_metrics = step(state, batch)
  ones, ones_metrics = step(state, {**batch, "weights": np.ones(BATCH, np.float32)})
  for a, b in zip(jax.tree_util.tree_leaves((plain, plain_metrics)),
                  jax.tree_util.tree_leaves((ones, ones_metrics))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A weight of 0 removes an example, 2 counts it twice: the update of weights (0, 2, 1..)
  # equals the update of the batch with example 0 replaced by a copy of example 1.
  w = np.ones(BATCH, np.float32)
  w[0], w[1] = 0.0, 2.0
  weighted, _ = step(state, {**batch, "weights": w})
  duplicate = {k: v.copy() for k, v in batch.items()}
  for k in ("images", "labels", "example_ids"):
    duplicate[k][0] = batch[k][1]
  duplicated, _ = step(state, duplicate)
  for a, b in zip(jax.tree_util.tree_leaves(weighted.params),
                  jax.tree_util.tree_leaves(duplicated.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ periodic re-scoring

def _independent_el2n(model, variables, digits):
  """EL2N in float64 numpy from the eval-mode logits of the restored checkpoint."""
  images = (digits.train_images.astype(np.float32) - digits.mean) / digits.std
  logits = np.asarray(model.apply(variables, jnp.asarray(images), train=False), np.float64)
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  onehot = np.eye(digits.num_classes)[digits.train_labels]
  return np.sqrt(((probs - onehot) ** 2).sum(1))


def test_subset_at_each_rescoring_is_a_brute_force_selection_of_independent_scores(
    tmp_path, digits, model):
  config = DynamicConfig("el2n", keep_fraction=0.5, warmup_epochs=1, rescore_every=1,
                         ema_alpha=0.8, ema_std_k=1.0, seed=5)
  train = _train_config(digits, 3)
  run = str(tmp_path / "run")
  train_run(run, model, digits, OPTIMIZER, train, 1, 2, progress=False,
            policy=make_dynamic_policy(config, model, digits), num_epochs=3)
  n, keep = digits.num_train, digits.num_train // 2
  full, pruned = n // BATCH, keep // BATCH
  mean = var = None
  for scoring, step in enumerate((full, full + pruned)):  # epochs 1 and 2 start here
    state, _ = restore_run_state(run, step, model, digits, OPTIMIZER, train, 1, 2)
    scores = _independent_el2n(model, model_variables(state), digits)
    if mean is None:  # EMA (alpha 0.8) + 1.0 x running std, by hand
      mean, var = scores, np.zeros(n)
    else:
      diff = scores - mean
      mean, var = mean + 0.8 * diff, 0.2 * (var + 0.8 * diff ** 2)
    effective = mean + np.sqrt(var)
    order = sorted(range(n), key=lambda i: (-effective[i], i))  # hardest first, ties: low id
    expected = set(order[:keep])
    _, plan, where = load_policy_state(run, step, make_dynamic_policy(
        config, model, digits).init_state())
    assert where["epoch"] == scoring + 1 and where["epoch_start"] == step
    assert len(plan.ids) == keep and plan.scored_examples == n
    cut = effective[order[keep - 1]]
    near = {i for i in range(n) if abs(effective[i] - cut) < 2e-5}  # float32 vs float64
    assert set(plan.ids.tolist()) - near == expected - near
    assert len(near) <= 10


def test_random_control_draws_a_fresh_subset_of_the_same_size_without_scoring(digits, model):
  policy = make_dynamic_policy(DynamicConfig("random", 0.3, warmup_epochs=1), model, digits)
  state = policy.init_state()
  state, warm = policy.plan_epoch(state, 0, None)
  assert len(warm.ids) == digits.num_train and warm.scored_examples == 0
  state, first = policy.plan_epoch(state, 1, None)
  state, second = policy.plan_epoch(state, 2, None)
  size = int(0.3 * digits.num_train)
  assert len(first.ids) == len(second.ids) == size and first.scored_examples == 0
  assert not np.array_equal(first.ids, second.ids)
  assert len(np.unique(first.ids)) == size


# ------------------------------------------------------------------------------ InfoBatch

def test_infobatch_well_learned_set_weights_and_pruning_probability_by_hand():
  losses = np.array([np.inf, 0.1, 0.5, 0.9, 2.0, 0.3], np.float32)
  # seen: ids 1-5, mean (0.1 + 0.5 + 0.9 + 2.0 + 0.3) / 5 = 0.76 -> well learned: 1, 2, 5
  np.testing.assert_array_equal(well_learned(losses), [0, 1, 1, 0, 0, 1])
  config = InfoBatchConfig(prune_ratio=0.3, delta=0.75, num_epochs=4000, seed=3)
  dropped = np.zeros(6)
  for epoch in range(2000):
    ids, weights = plan_infobatch_epoch(config, InfoBatchState(losses), epoch)
    kept = np.zeros(6, bool)
    kept[ids] = True
    dropped += ~kept
    expected_w = np.where(np.isin(ids, [1, 2, 5]), 1 / 0.7, 1.0)
    np.testing.assert_allclose(weights, expected_w, rtol=1e-6)
  rate = dropped / 2000
  assert rate[[0, 3, 4]].tolist() == [0, 0, 0]  # unseen and above-mean: never dropped
  assert np.all(np.abs(rate[[1, 2, 5]] - 0.3) < 0.035)  # 3.4 sigma of Binomial(2000, .3)
  # Annealing: from epoch floor(0.75 * 4000) = 3000 on, every example with weight 1.
  ids, weights = plan_infobatch_epoch(config, InfoBatchState(losses), 3000)
  np.testing.assert_array_equal(ids, np.arange(6))
  np.testing.assert_array_equal(weights, np.ones(6))
  ids, _ = plan_infobatch_epoch(config, InfoBatchState(np.full(6, np.inf, np.float32)), 0)
  np.testing.assert_array_equal(ids, np.arange(6))  # nothing seen: nothing pruned


def test_infobatch_mean_gradient_converges_to_the_full_data_gradient_on_a_linear_model():
  rng = np.random.default_rng(0)
  n, d = 200, 5
  x, y = rng.normal(size=(n, d)), rng.normal(size=n)
  w0 = rng.normal(size=d)
  losses = (0.5 * (x @ w0 - y) ** 2).astype(np.float32)

  def objective(w, weights):  # the train step's objective: mean over the batch of w_i l_i
    return jnp.mean(weights * 0.5 * (x @ w - y) ** 2)

  grad = jax.jit(jax.grad(objective))
  full = np.asarray(grad(w0, np.ones(n)))
  config = InfoBatchConfig(prune_ratio=0.5, delta=1.0, num_epochs=10**6, seed=0)
  rescaled, unscaled, draws = np.zeros(d), np.zeros(d), 4000
  for epoch in range(draws):
    ids, weights = plan_infobatch_epoch(config, InfoBatchState(losses), epoch)
    dense = np.zeros(n)
    dense[ids] = weights  # dropped examples: weight 0 over the full-size batch
    rescaled += np.asarray(grad(w0, dense))
    dense[ids] = 1.0
    unscaled += np.asarray(grad(w0, dense))
  error = np.linalg.norm(rescaled / draws - full) / np.linalg.norm(full)
  bias = np.linalg.norm(unscaled / draws - full) / np.linalg.norm(full)
  assert error < 0.01, error
  assert bias > 0.05, bias  # without the 1/(1-r) weights the estimate is biased


# ------------------------------------------------------------ resume and accounting

def _policy(kind, digits, model):
  if kind == "el2n":
    return make_dynamic_policy(DynamicConfig("el2n", 0.5, warmup_epochs=1, rescore_every=1,
                                             seed=9), model, digits)
  return InfoBatchPolicy(InfoBatchConfig(0.5, 0.75, 3, seed=9), digits.num_train)


@pytest.mark.parametrize("kind", ["el2n", "infobatch"])
def test_interrupted_dynamic_run_resumes_to_the_bit_identical_result(tmp_path, digits, model,
                                                                     kind, monkeypatch):
  train = _train_config(digits, 3, save_steps=5)
  fed = {"uninterrupted": [], "interrupted": []}
  real_compiled = loop._compiled
  target = {"name": "uninterrupted"}

  def counting(*args, **kwargs):  # counts the examples the jitted step is actually fed
    step, evaluate = real_compiled(*args, **kwargs)

    def counted(state, forget, batch):
      fed[target["name"]].append(np.asarray(batch["example_ids"]).copy())
      return step(state, forget, batch)
    return counted, evaluate

  monkeypatch.setattr(loop, "_compiled", counting)
  whole = train_run(str(tmp_path / "whole"), model, digits, OPTIMIZER, train, 1, 2,
                    progress=False, policy=_policy(kind, digits, model), num_epochs=3)
  target["name"] = "interrupted"
  cut = digits.num_train // BATCH + 6  # mid epoch 1, after the checkpoint at step 25
  part = train_run(str(tmp_path / "part"), model, digits, OPTIMIZER, train, 1, 2,
                   progress=False, policy=_policy(kind, digits, model), num_epochs=3,
                   stop_after_step=cut)
  assert part.final_step == cut
  rest = train_run(str(tmp_path / "part"), model, digits, OPTIMIZER, train, 1, 2,
                   progress=False, policy=_policy(kind, digits, model), num_epochs=3)
  assert rest.final_step == whole.final_step < train.num_steps  # pruned epochs: fewer steps
  a, _ = restore_run_state(whole.run_dir, whole.final_step, model, digits, OPTIMIZER, train, 1, 2)
  b, _ = restore_run_state(rest.run_dir, rest.final_step, model, digits, OPTIMIZER, train, 1, 2)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert whole.test_accuracy == rest.test_accuracy
  summaries = [json.load(open(os.path.join(r.run_dir, "summary.json"))) for r in (whole, rest)]
  count_keys = ("optimizer_steps", "train_examples", "scored_examples")
  assert [summaries[0]["accounting"][k] for k in count_keys] == \
         [summaries[1]["accounting"][k] for k in count_keys]
  # Accounting == what the step was fed (uninterrupted run).
  account = summaries[0]["accounting"]
  assert account["optimizer_steps"] == len(fed["uninterrupted"]) == whole.final_step
  assert account["train_examples"] == sum(len(b) for b in fed["uninterrupted"])
  n, full = digits.num_train, digits.num_train // BATCH
  if kind == "el2n":  # epoch 0 full, epochs 1 and 2 each on a fresh half, scored before
    assert whole.final_step == full + 2 * ((n // 2) // BATCH)
    assert account["scored_examples"] == 2 * n
  else:  # epoch 0 full; epoch 1 pruned (floor(0.75 * 3) = 2 pruning epochs); epoch 2 full
    assert account["scored_examples"] == 0
    assert full < whole.final_step < 3 * full
  # The resumed run re-fed exactly the uninterrupted batches after the checkpoint at 25.
  resumed = fed["interrupted"][cut:]
  np.testing.assert_array_equal(np.concatenate(resumed),
                                np.concatenate(fed["uninterrupted"][25:]))


# ------------------------------------------------------------------------------- the CLI

def test_bad_dynamic_flags_fail_with_one_clear_line_exit_2_and_write_nothing(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             DATADIET_CACHE=str(tmp_path / "cache"))
  base = ["--dataset=digits", "--num_epochs=3", "--batch_size=64", "--num_filters=4",
          "--augment=false", "--noprogress"]
  cases = {
      "keep_zero": (["--mode=dynamic", "--dynamic_keep_fraction=0"], "--dynamic_keep_fraction"),
      "keep_over_one": (["--mode=dynamic_sweep", "--dynamic_keep_fractions=0.5,1.5"],
                        "--dynamic_keep_fraction=1.5"),
      "r_one": (["--mode=dynamic", "--dynamic_method=infobatch", "--infobatch_r=1.0"],
                "--infobatch_r=1.0"),
      "r_negative": (["--mode=dynamic_sweep", "--infobatch_ratios=-0.1"], "--infobatch_r=-0.1"),
      "period_zero": (["--mode=dynamic", "--dynamic_rescore_every=0"],
                      "--dynamic_rescore_every=0"),
      "warmup_too_long": (["--mode=dynamic", "--dynamic_warmup_epochs=3"],
                          "--dynamic_warmup_epochs=3"),
  }
  procs = {}
  for name, (extra, _) in cases.items():
    workdir = tmp_path / f"work_{name}"
    procs[name] = (workdir, subprocess.Popen(
        [sys.executable, "-m", "experiments.cifar", *base, f"--workdir={workdir}", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for name, (workdir, proc) in procs.items():
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{stderr[-2000:]}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {stderr[-2000:]}"
    assert cases[name][1] in lines[0], f"{name}: {lines[0]}"
    assert not workdir.exists(), f"{name}: wrote {workdir}"


def test_steps_budget_keeps_the_step_count_and_runs_more_shorter_epochs(tmp_path, digits,
                                                                        model):
  train = _train_config(digits, 2)
  policy = make_dynamic_policy(DynamicConfig("random", 0.5, warmup_epochs=1), model, digits)
  result = train_run(str(tmp_path / "run"), model, digits, OPTIMIZER, train, 1, 2,
                     progress=False, policy=policy)
  summary = json.load(open(os.path.join(result.run_dir, "summary.json")))
  full, half = digits.num_train // BATCH, (digits.num_train // 2) // BATCH
  assert result.final_step == summary["accounting"]["optimizer_steps"] == train.num_steps
  assert summary["accounting"]["train_examples"] == train.num_steps * BATCH
  assert summary["num_epochs"] == 1 + -(-(train.num_steps - full) // half)  # 1 + ceil(22/11)
  assert summary["budget"] == "steps"


def test_sweep_table_lists_diverged_runs_and_never_averages_them():
  from datadiet_jax.pipelines.dynamic_sweep import summarize
  base = {"label": "", "optimizer_steps": 10, "scored_examples": 0, "score_seconds": 0.0}
  rows = [
      {**base, "method": "full", "setting": "all data", "seed": 0, "outcome": "ok",
       "test_accuracy": 0.9, "train_examples": 1000, "train_seconds": 10.0,
       "wall_seconds": 20.0},
      {**base, "method": "full", "setting": "all data", "seed": 1, "outcome": "ok",
       "test_accuracy": 0.8, "train_examples": 1000, "train_seconds": 10.0,
       "wall_seconds": 30.0},
      {**base, "method": "infobatch", "setting": "r = 0.5", "seed": 0, "outcome": "ok",
       "test_accuracy": 0.85, "train_examples": 600, "train_seconds": 7.0,
       "scored_examples": 300, "score_seconds": 2.0, "wall_seconds": 15.0},
      {**base, "method": "infobatch", "setting": "r = 0.5", "seed": 1, "outcome": "diverged",
       "test_accuracy": None, "train_examples": 100, "train_seconds": 1.0},
  ]
  table = {r["method"]: r for r in summarize(rows)}
  assert table["full"]["test_accuracy_mean"] == pytest.approx(0.85)
  assert table["full"]["test_accuracy_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
  infobatch = table["infobatch"]
  assert infobatch["num_ok"] == 1 and infobatch["not_ok"] == "seed 1: diverged"
  assert infobatch["test_accuracy_mean"] == pytest.approx(0.85)
  assert infobatch["compute_fraction"] == pytest.approx((600 + 300 / 3) / 1000)
  assert infobatch["wall_fraction"] == pytest.approx((7.0 + 2.0) / 10.0)
  # The whole run against the same seed's full run (seed 0: 15 / 20), not the full mean (25).
  assert infobatch["run_wall_fraction"] == pytest.approx(15.0 / 20.0)
  assert infobatch["run_wall_seconds"] == 15.0 and infobatch["score_seconds"] == 2.0
  assert table["full"]["run_wall_fraction"] == pytest.approx(1.0)
  assert table["full"]["run_wall_seconds"] == pytest.approx(25.0)


def test_sweep_pairs_cells_with_full_data_and_with_random_by_seed():
  from datadiet_jax.pipelines.dynamic_sweep import (DynamicSweepConfig, markdown_table,
                                                    paired_with_baselines, summarize)
  base = {"label": "", "optimizer_steps": 10, "scored_examples": 0, "score_seconds": 0.0,
          "train_examples": 100, "train_seconds": 1.0, "outcome": "ok"}
  accs = {("full", None): [0.90, 0.80, 0.85], ("dynamic_el2n", 0.5): [0.88, 0.79, 0.80],
          ("dynamic_random", 0.5): [0.85, 0.75, 0.83], ("infobatch", 0.5): [0.90, 0.81, 0.84]}
  rows = [{**base, "method": method, "param": "" if param is None else param,
           "setting": {"full": "all data", "infobatch": "r = 0.5"}.get(method, "keep 50%"),
           "seed": seed, "test_accuracy": acc}
          for (method, param), values in accs.items() for seed, acc in enumerate(values)]
  rows.append({**rows[-1], "seed": 3, "outcome": "diverged", "test_accuracy": None})
  pairs = {(p.method, p.baseline): p for p in paired_with_baselines(rows)}
  assert set(pairs) == {("dynamic EL2N, keep 50%", "full data"),
                        ("dynamic random, keep 50%", "full data"),
                        ("InfoBatch, r = 0.5", "full data"),
                        ("dynamic EL2N, keep 50%", "dynamic random")}
  # EL2N - random per seed: +0.03, +0.04, -0.03; by hand: mean 0.013333, sample sd
  # sqrt(0.0028667 / 2) = 0.037859, t_{0.975, 2} = 4.302653 (table value).
  el2n = pairs[("dynamic EL2N, keep 50%", "dynamic random")]
  assert el2n.num_pairs == 3 and el2n.fraction == 0.5
  half = 4.302653 * 0.0378594 / np.sqrt(3)
  assert el2n.mean_difference == pytest.approx(0.0133333, abs=1e-6)
  assert (el2n.ci_low, el2n.ci_high) == pytest.approx((0.0133333 - half, 0.0133333 + half),
                                                      abs=1e-5)
  t = 0.0133333 / (0.0378594 / np.sqrt(3))  # two-sided p at 2 dof: 1 - t / sqrt(t^2 + 2)
  assert el2n.p_value == pytest.approx(1 - t / np.sqrt(t * t + 2), abs=1e-5)
  infobatch = pairs[("InfoBatch, r = 0.5", "full data")]  # the diverged seed 3 is unpaired
  assert infobatch.num_pairs == 3 and infobatch.seeds_unpaired == (3,)
  assert infobatch.mean_difference == pytest.approx(0.0, abs=1e-9)
  table = summarize(rows)
  full = next(r for r in table if r["method"] == "full")
  sd = np.std([0.90, 0.80, 0.85], ddof=1)
  assert (full["test_accuracy_ci95_low"], full["test_accuracy_ci95_high"]) == pytest.approx(
      (0.85 - 4.302653 * sd / np.sqrt(3), 0.85 + 4.302653 * sd / np.sqrt(3)), abs=1e-6)
  text = markdown_table(table, type("D", (), {"name": "x", "num_train": 100}),
                        DynamicSweepConfig(num_epochs=2, keep_fractions=(0.5,),
                                           infobatch_ratios=(0.5,)),
                        pairs=list(pairs.values()))
  assert "Paired by seed against full data" in text
  assert "| dynamic EL2N, keep 50% | 50% | 3 | +1.33 |" in text
  assert "| InfoBatch, r = 0.5 | 3 (seeds 3 unpaired) | +0.00 |" in text
