"""Training-dynamics scores tracked by the train step (train/dynamics.py): AUM, Dyn-Unc,
DUAL and TDDS accumulated over a real run equal independent numpy loops over the logits
the step saw, resume exactly, sit beside forgetting in the checkpoint, and reach score
files (`--scores=aum,...` at a checkpoint step) through the CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from datadiet_jax.scores import dual, tdds
from datadiet_jax.scores.forgetting import load_forget_stats
from datadiet_jax.train import loop
from datadiet_jax.train.dynamics import Tracked, dynamics_scores
from datadiet_jax.train.ensemble_loop import train_ensemble
from datadiet_jax.train.loop import TrainConfig, restore_run_state, train_run
from datadiet_jax.train.optimizer import OptimizerConfig
from datadiet_jax.train.state import model_variables
from datadiet_jax.train.tasks import task_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, EPOCHS, WINDOW = 64, 4, 3
NAMES = ("aum", "dyn_unc", "dual", "tdds")
OPTIMIZER = OptimizerConfig(learning_rate=0.05)


def _config(digits, **changes):
  return TrainConfig(**{"num_steps": EPOCHS * (digits.num_train // BATCH), "batch_size": BATCH,
                        "eval_every_steps": -1, "save_steps": 10, "augment": False,
                        "track_dynamics": NAMES, "dynamics_window": WINDOW, **changes})


def _recording(monkeypatch, model, digits, seen):
  """Wraps the jitted step: before each step, the logits the step will compute (train mode,
  the pre-update state, this batch), recomputed outside it, with the ids and labels."""
  real = loop._compiled
  task = task_for(digits, augment=False)

  def compiled(*args, **kwargs):
    step, evaluate = real(*args, **kwargs)

    def recorded(state, forget, batch):
      inputs = task.model_inputs(batch, jax.random.fold_in(state.key, state.step), train=True)
      logits, _ = model.apply(model_variables(state), inputs, train=True,
                              mutable=["batch_stats"])
      seen.append((np.asarray(batch["example_ids"]), np.asarray(logits, np.float64),
                   np.asarray(batch["labels"])))
      return step(state, forget, batch)
    return recorded, evaluate

  monkeypatch.setattr(loop, "_compiled", compiled)


def _numpy_scores(seen, n):
  """AUM and Dyn-Unc by plain loops over each example's visits (float64), and DUAL / TDDS by
  their modules' functions fed the same visits one step at a time."""
  margins, probs = [[] for _ in range(n)], [[] for _ in range(n)]
  for ids, logits, labels in seen:
    for i, z, y in zip(ids, logits, labels):
      others = np.delete(z, y)
      margins[i].append(z[y] - others.max())
      e = np.exp(z - z.max())
      probs[i].append(e[y] / e.sum())
  aum_ = np.array([-np.mean(m) if m else np.nan for m in margins])
  dyn = np.full(n, np.nan)
  for i, p in enumerate(probs):
    if len(p) >= WINDOW:
      dyn[i] = np.mean([np.std(p[k:k + WINDOW], ddof=1) for k in range(len(p) - WINDOW + 1)])
  d_state, t_state = dual.init_dual(n, WINDOW), tdds.init_tdds(n, 10, WINDOW)
  for ids, logits, labels in seen:
    d_state = dual.update_dual(d_state, ids, np.float32(logits), labels)
    t_state = tdds.update_tdds(t_state, ids, np.float32(logits), labels)
  return {"aum": aum_, "dyn_unc": dyn, "dual": np.asarray(dual.dual_score(d_state)),
          "tdds": np.asarray(tdds.tdds_score(t_state))}


def test_dynamics_of_a_run_equal_loops_over_the_logits_it_trained_on(tmp_path, digits, model,
                                                                    monkeypatch):
  seen = []
  _recording(monkeypatch, model, digits, seen)
  config = _config(digits)
  result = train_run(str(tmp_path / "run"), model, digits, OPTIMIZER, config, 1, 2,
                     progress=False)
  assert len(seen) == config.num_steps
  want = _numpy_scores(seen, digits.num_train)
  for name in NAMES:
    got = np.load(tmp_path / "run" / "dynamics" / f"{name}.npy")
    assert got.shape == (digits.num_train,) and got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want[name]), err_msg=name)
    np.testing.assert_allclose(got, want[name], rtol=2e-4, atol=2e-5, equal_nan=True,
                               err_msg=name)
  # Visits are real: 4 epochs of 22 batches leave some examples with < 3 visits (NaN).
  assert 0 < int(np.isnan(want["dyn_unc"]).sum()) < digits.num_train // 10
  # Forgetting rides beside them and still reads back with a plain ForgetStats template.
  _, tracked = restore_run_state(result.run_dir, config.num_steps, model, digits, OPTIMIZER,
                                 config, 1, 2)
  assert isinstance(tracked, Tracked)
  stats = load_forget_stats(os.path.join(result.run_dir, "checkpoints"), config.num_steps,
                            digits.num_train)
  for x, y in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(tracked.forget)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_an_interrupted_run_resumes_its_dynamics_exactly(tmp_path, digits, model):
  config = _config(digits)
  whole = train_run(str(tmp_path / "whole"), model, digits, OPTIMIZER, config, 1, 2,
                    progress=False)
  train_run(str(tmp_path / "part"), model, digits, OPTIMIZER, config, 1, 2, progress=False,
            stop_after_step=47)  # resumes from the checkpoint at step 40
  rest = train_run(str(tmp_path / "part"), model, digits, OPTIMIZER, config, 1, 2,
                   progress=False)
  states = [restore_run_state(r.run_dir, config.num_steps, model, digits, OPTIMIZER, config,
                              1, 2)[1] for r in (whole, rest)]
  for x, y in zip(jax.tree_util.tree_leaves(states[0]), jax.tree_util.tree_leaves(states[1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for name, values in dynamics_scores(states[0]).items():
    np.testing.assert_array_equal(values, np.load(tmp_path / "part" / "dynamics" / f"{name}.npy"))


@pytest.mark.parametrize("strategy", ["map", "vmap"])
def test_ensemble_members_track_the_dynamics_their_lone_runs_track(tmp_path, digits, model,
                                                                   strategy):
  """Each member of a 2-member ensemble (one jitted step over the member axis) accumulates
  the dynamics its run trained alone accumulates, and an interrupted ensemble resumes them
  bit for bit."""
  config = _config(digits)
  seeds = [(1, 2), (3, 4)]
  whole = [str(tmp_path / f"whole_{m}") for m in range(2)]
  train_ensemble(whole, model, digits, OPTIMIZER, config, seeds, progress=False,
                 strategy=strategy)
  for m, (model_seed, data_seed) in enumerate(seeds):
    alone = train_run(str(tmp_path / f"alone_{m}"), model, digits, OPTIMIZER, config,
                      model_seed, data_seed, progress=False)
    for name in NAMES:
      got = np.load(os.path.join(whole[m], "dynamics", f"{name}.npy"))
      want = np.load(os.path.join(alone.run_dir, "dynamics", f"{name}.npy"))
      np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, equal_nan=True,
                                 err_msg=f"member {m} {name}")
  a, b = (np.load(os.path.join(d, "dynamics", "aum.npy")) for d in whole)
  assert not np.allclose(a, b)  # the members' own seeds, own trajectories
  cut = [str(tmp_path / f"cut_{m}") for m in range(2)]
  train_ensemble(cut, model, digits, OPTIMIZER, config, seeds, progress=False,
                 stop_after_step=47, strategy=strategy)  # resumes from step 40
  train_ensemble(cut, model, digits, OPTIMIZER, config, seeds, progress=False,
                 strategy=strategy)
  for m, (model_seed, data_seed) in enumerate(seeds):
    states = [restore_run_state(d, config.num_steps, model, digits, OPTIMIZER, config,
                                model_seed, data_seed)[1] for d in (whole[m], cut[m])]
    assert isinstance(states[1], Tracked)
    for x, y in zip(jax.tree_util.tree_leaves(states[0]),
                    jax.tree_util.tree_leaves(states[1])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_cli_scores_dynamics_at_a_checkpoint_step_and_refuses_what_it_cannot(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  base = [sys.executable, "-m", "experiments.cifar", "--dataset=digits", "--model=small_cnn",
          "--num_filters=4", "--batch_size=64", "--num_epochs=6", "--lr=0.05",
          "--eval_every_steps=-1", "--save_steps=0", "--noprogress"]
  work = tmp_path / "work"
  tracked = ["--track_dynamics=aum,dyn_unc,dual,tdds", f"--dynamics_window={WINDOW}"]

  def cli(*args):
    return subprocess.run([*base, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)

  done = cli("--mode=train_score", *tracked, f"--workdir={work}", "--num_runs=2",
             "--scores=aum,dyn_unc,dual,tdds,forgetting", "--score_step=132")
  assert done.returncode == 0, done.stderr[-3000:]
  for name in NAMES:
    mean = np.load(work / "scores" / name / "step_132.npy")
    per_run = np.stack([np.load(work / "runs" / f"run_{r}" / "dynamics" / f"{name}.npy")
                        for r in range(2)])  # the final step is 132: the same statistics
    np.testing.assert_allclose(mean, per_run.mean(0), rtol=1e-6)
    assert "accumulated during training" in json.load(
        open(work / "scores" / name / "step_132.json"))["note"]
  # An earlier checkpoint step (epoch 2: no example has 3 visits yet) is refused with the
  # reason; AUM needs one visit, which every example has had by epoch 4.
  early = cli("--mode=score", *tracked, f"--workdir={work}", "--num_runs=2", "--scores=dyn_unc",
              "--score_step=44")
  assert early.returncode == 2
  assert "examples have not had a full window of visits by step 44" in early.stderr
  assert "1442 of 1442 examples" in early.stderr
  assert cli("--mode=score", *tracked, f"--workdir={work}", "--num_runs=2", "--scores=aum",
             "--score_step=88").returncode == 0
  assert np.isfinite(np.load(work / "scores" / "aum" / "step_88.npy")).all()
  # The same runs trained as one 2-member ensemble accumulate the same AUM.
  ensemble = tmp_path / "ensemble"
  done = cli("--mode=train", *tracked, f"--workdir={ensemble}", "--num_runs=2",
             "--ensemble_members=2")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "2 members (map)" in done.stderr  # one stacked step, not two lone runs
  for r in range(2):
    np.testing.assert_allclose(np.load(ensemble / "runs" / f"run_{r}" / "dynamics" / "aum.npy"),
                               np.load(work / "runs" / f"run_{r}" / "dynamics" / "aum.npy"),
                               rtol=2e-4, atol=2e-5)
  # Runs trained without the dynamics: one line naming the fix, nothing written.
  plain = tmp_path / "plain"
  assert cli("--mode=train", f"--workdir={plain}").returncode == 0
  refused = cli("--mode=score", f"--workdir={plain}", "--scores=aum", "--score_step=132")
  assert refused.returncode == 2, refused.stderr[-2000:]
  assert "holds no training-dynamics statistics" in refused.stderr
  assert not (plain / "scores" / "aum").exists()
  # Switching the dynamics on in a workdir trained without them is a config mismatch; the
  # workdir's config.json of a run without them records no dynamics entries at all.
  train = json.load(open(plain / "config.json"))["train"]
  assert "track_dynamics" not in train and "dynamics_window" not in train
  mismatch = cli("--mode=train", *tracked, f"--workdir={plain}")
  assert mismatch.returncode == 2 and "other settings (train differ)" in mismatch.stderr
  for bad, message in (
      (["--track_dynamics=aum,margins"], "--track_dynamics: unknown ['margins']"),
      (["--track_dynamics=tdds", "--dynamics_window=2"], "K must be >= 3")):
    done = cli("--mode=train", *bad, f"--workdir={tmp_path / 'bad'}")
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
