"""Ensemble training (train/ensemble_loop.py): M runs in one jitted step end where the same
runs trained alone by `train_run` end, write per-run checkpoints the existing restore code
reads, resume exactly, and shard over a 2-D members x data mesh (8 simulated devices).

Tolerance: the ensemble step runs the members' computation inside lax.map or vmap, which
XLA may fuse differently from a lone step, so float results agree to float32 rounding
amplified by a few SGD steps (observed: <= 6e-8 absolute for SimpleCNN after 6 steps,
2.4e-5 on a ResNet18-4 momentum buffer of magnitude 2.3 after 4 steps); the test allows
rtol 1e-4 plus atol 1e-4 x the leaf's largest magnitude for params, optimizer and BatchNorm
state, rtol 1e-4 / atol 1e-5 for the metrics.csv values, and requires exact equality for the
integer/boolean state (step, PRNG key, forgetting statistics). Resuming an ensemble
replays the same compiled program, so resume is checked bitwise.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from datadiet_jax.data.dataset import Dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.ensemble_loop import (make_ensemble_step, member_bytes,
                                              members_that_fit, resolve_strategy,
                                              train_ensemble)
from datadiet_jax.train.loop import TrainConfig, build_run, restore_run_state, train_run
from datadiet_jax.train.optimizer import OptimizerConfig
from conftest import TEST_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = [(3, 33), (7, 77)]
OPTIMIZER = OptimizerConfig(learning_rate=0.02)
CONFIG = TrainConfig(num_steps=4, batch_size=16, eval_every_steps=2, save_steps=2,
                     eval_batch_size=32)


def synthetic_dataset(n_train=96, n_test=32, channels=1, seed=0) -> Dataset:
  rng = np.random.RandomState(seed)

  def split(n):
    labels = (np.arange(n) % 10).astype(np.int32)
    rng.shuffle(labels)
    x = np.clip(rng.randint(0, 120, (n, 8, 8, channels)) + 14 * labels[:, None, None, None],
                0, 255)
    return x.astype(np.uint8), labels

  (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
  return Dataset("synthetic", xtr, ytr, xte, yte, tuple(map(str, range(10))),
                 xtr.mean((0, 1, 2)).astype(np.float32), xtr.std((0, 1, 2)).astype(np.float32),
                 "synthetic order")


def assert_same_run(run_a, run_b, model, dataset, config, seeds, step, exact=False,
                    optimizer=OPTIMIZER):
  a, forget_a = restore_run_state(run_a, step, model, dataset, optimizer, config, *seeds)
  b, forget_b = restore_run_state(run_b, step, model, dataset, optimizer, config, *seeds)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    if exact or not np.issubdtype(x.dtype, np.floating):
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(y).max())),
                                 err_msg=jax.tree_util.keystr(path))
  for x, y in zip(jax.tree_util.tree_leaves(forget_a), jax.tree_util.tree_leaves(forget_b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(np.load(os.path.join(run_a, "forget_scores.npy")),
                                np.load(os.path.join(run_b, "forget_scores.npy")))
  rows_a, rows_b = (np.genfromtxt(os.path.join(r, "metrics.csv"), delimiter=",", names=True)
                    for r in (run_a, run_b))
  for name in ("step", "epoch", "lr", "train_loss", "train_accuracy", "test_loss",
               "test_accuracy"):
    np.testing.assert_allclose(rows_a[name], rows_b[name], rtol=1e-4, atol=1e-5, err_msg=name)
  summary_a, summary_b = (json.load(open(os.path.join(r, "summary.json"))) for r in (run_a, run_b))
  for key in ("final_step", "model_seed", "data_seed", "num_train_examples", "steps_per_epoch"):
    assert summary_a[key] == summary_b[key], key


@pytest.mark.parametrize("model_name,num_filters,channels,strategy", [
    ("simple_cnn", 4, 1, "map"), ("small_cnn", 4, 1, "vmap"), ("resnet18_lowres", 4, 3, "map")])
def test_ensemble_members_equal_runs_trained_alone(tmp_path, model_name, num_filters, channels,
                                                  strategy):
  """Each member (own seeds, batch order, augmentation, BN stats, forgetting) ends as
  `train_run` alone ends: state, checkpoints at every saved step, forgetting, metrics."""
  dataset = synthetic_dataset(channels=channels)
  model = get_model(model_name, 10, num_filters=num_filters)
  ensemble_dirs = [str(tmp_path / f"ensemble_{m}") for m in range(len(SEEDS))]
  results = train_ensemble(ensemble_dirs, model, dataset, OPTIMIZER, CONFIG, SEEDS,
                           progress=False, strategy=strategy)
  assert [r.steps_trained for r in results] == [4, 4]
  for m, seeds in enumerate(SEEDS):
    alone = str(tmp_path / f"alone_{m}")
    result = train_run(alone, model, dataset, OPTIMIZER, CONFIG, *seeds, progress=False)
    assert results[m].test_accuracy == pytest.approx(result.test_accuracy, abs=1e-6)
    assert sorted(os.listdir(os.path.join(ensemble_dirs[m], "checkpoints"))) == sorted(
        os.listdir(os.path.join(alone, "checkpoints")))
    for step in (0, 2, 4):
      assert_same_run(ensemble_dirs[m], alone, model, dataset, CONFIG, seeds, step)
  # The members really differ (own seeds), and a second call skips the finished runs.
  a, _ = restore_run_state(ensemble_dirs[0], 4, model, dataset, OPTIMIZER, CONFIG, *SEEDS[0])
  b, _ = restore_run_state(ensemble_dirs[1], 4, model, dataset, OPTIMIZER, CONFIG, *SEEDS[1])
  assert not np.allclose(jax.tree_util.tree_leaves(a.params)[0],
                         jax.tree_util.tree_leaves(b.params)[0])
  again = train_ensemble(ensemble_dirs, model, dataset, OPTIMIZER, CONFIG, SEEDS,
                         progress=False, strategy=strategy)
  assert [r.steps_trained for r in again] == [0, 0]


def test_interrupted_ensemble_resumes_exactly(tmp_path):
  """Stop after step 3 (checkpoints 0 and 2), lose member 1's step 2, resume: both members
  restart from the newest common step (0) and end bitwise where an uninterrupted ensemble
  ends; per-member pruned subsets (one example-id array per member) are honoured."""
  dataset = synthetic_dataset()
  model = get_model("small_cnn", 10, num_filters=4)
  ids = [np.arange(0, 80, dtype=np.int32), np.arange(16, 96, dtype=np.int32)]
  whole = [str(tmp_path / f"whole_{m}") for m in range(2)]
  cut = [str(tmp_path / f"cut_{m}") for m in range(2)]
  train_ensemble(whole, model, dataset, OPTIMIZER, CONFIG, SEEDS, example_ids=ids,
                 progress=False, strategy="map")
  first = train_ensemble(cut, model, dataset, OPTIMIZER, CONFIG, SEEDS, example_ids=ids,
                         progress=False, stop_after_step=3, strategy="map")
  assert [r.final_step for r in first] == [3, 3]
  assert not os.path.exists(os.path.join(cut[0], "summary.json"))
  assert sorted(os.listdir(os.path.join(cut[1], "checkpoints"))) == ["0", "2"]
  shutil.rmtree(os.path.join(cut[1], "checkpoints", "2"))
  second = train_ensemble(cut, model, dataset, OPTIMIZER, CONFIG, SEEDS, example_ids=ids,
                          progress=False, strategy="map")
  assert [r.steps_trained for r in second] == [4, 4]
  for m in range(2):
    assert_same_run(cut[m], whole[m], model, dataset, CONFIG, SEEDS[m], 4, exact=True)
    assert sorted(os.listdir(os.path.join(cut[m], "checkpoints"))) == ["0", "2", "4"]
  # And member 1 equals its run trained alone on its own subset.
  alone = str(tmp_path / "alone_1")
  train_run(alone, model, dataset, OPTIMIZER, CONFIG, *SEEDS[1], example_ids=ids[1],
            progress=False)
  assert_same_run(whole[1], alone, model, dataset, CONFIG, SEEDS[1], 4)


def test_strategy_choice_and_memory_estimate():
  assert resolve_strategy("auto", backend="cpu") == "map"
  assert resolve_strategy("auto", backend="gpu") == "vmap"
  assert resolve_strategy("auto", backend="tpu") == "vmap"
  assert resolve_strategy("vmap", backend="cpu") == "vmap"
  with pytest.raises(ValueError, match="unknown ensemble strategy 'scan'"):
    resolve_strategy("scan")
  with pytest.raises(ValueError, match="'vmap' or 'map'"):
    make_ensemble_step(lambda s, b: (s, {}), "auto")
  dataset = synthetic_dataset()
  model = get_model("small_cnn", 10, num_filters=4)
  state, _, _, _ = build_run(model, dataset, OPTIMIZER, CONFIG, 0, 0)
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  # f32 params x (params + gradients + updates + 1 momentum slot) + optax's i32 step count;
  # no BatchNorm.
  assert member_bytes(state, None) == 4 * params * 4 + 4
  from datadiet_jax.train.forgetting import init_forget_stats
  assert member_bytes(state, init_forget_stats(96)) == 4 * params * 4 + 4 + 96 * (1 + 4 + 1)
  assert members_that_fit(100, 4000) == 10  # 25% of 4000 bytes / 100 per member
  assert members_that_fit(10_000, 4000) == 1


def test_cli_groups_split_when_members_do_not_fit(caplog):
  from datadiet_jax.pipelines.train_runs import ensemble_group_size
  assert ensemble_group_size(4, 100, 10_000) == 4  # 25% of 10 kB holds 25 members
  with caplog.at_level("WARNING", logger="datadiet_jax"):
    assert ensemble_group_size(8, 1_000, 10_000) == 2
  assert "8 ensemble members need about" in caplog.text and "groups of 2" in caplog.text


# Runs in a fresh process: the device count is fixed when jax initializes its backend.
MESH_SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    import jax
    import numpy as np
    sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
    from test_ensemble import OPTIMIZER, CONFIG, SEEDS, synthetic_dataset
    from datadiet_jax.models import get_model
    from datadiet_jax.train.ensemble_loop import train_ensemble
    from datadiet_jax.train.loop import restore_run_state, train_run
    from datadiet_jax.train.sharding import ensemble_mesh

    folder = sys.argv[1]
    out = {"devices": len(jax.devices())}
    mesh = ensemble_mesh(2)
    out["mesh"] = dict(mesh.shape)
    out["mesh_4"] = dict(ensemble_mesh(4).shape)
    out["mesh_3"] = dict(ensemble_mesh(3).shape)
    dataset = synthetic_dataset()
    model = get_model("small_cnn", 10, num_filters=4)
    dirs = [os.path.join(folder, f"mesh_{m}") for m in range(2)]
    train_ensemble(dirs, model, dataset, OPTIMIZER, CONFIG, SEEDS, progress=False, mesh=mesh)
    out["max_abs_diff"], out["forget_equal"] = [], []
    for m, seeds in enumerate(SEEDS):
        alone = os.path.join(folder, f"alone_{m}")
        train_run(alone, model, dataset, OPTIMIZER, CONFIG, *seeds, progress=False)
        a, fa = restore_run_state(dirs[m], 4, model, dataset, OPTIMIZER, CONFIG, *seeds)
        b, fb = restore_run_state(alone, 4, model, dataset, OPTIMIZER, CONFIG, *seeds)
        out["max_abs_diff"].append(max(
            float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
            for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))
        out["forget_equal"].append(all(
            bool((np.asarray(x) == np.asarray(y)).all())
            for x, y in zip(jax.tree_util.tree_leaves(fa), jax.tree_util.tree_leaves(fb))))
    try:
        train_ensemble([os.path.join(folder, "odd")], model, dataset, OPTIMIZER,
                       CONFIG.__class__(num_steps=1, batch_size=15), [(1, 1)], progress=False,
                       mesh=ensemble_mesh(1))
        out["odd_error"] = None
    except ValueError as error:
        out["odd_error"] = str(error)
    print("RESULT" + json.dumps(out))
""")


def test_members_by_data_mesh_on_8_cpu_devices(tmp_path):
  """2 members on a 2 x 4 (members x data) mesh of 8 simulated CPU devices end where the
  runs trained alone on one device end (float32 tolerance: the batch mean of each member
  is now a cross-device reduction)."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(tmp_path), REPO], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT")[-1])
  assert out["devices"] == 8
  assert out["mesh"] == {"members": 2, "data": 4}
  assert out["mesh_4"] == {"members": 4, "data": 2}
  assert out["mesh_3"] == {"members": 1, "data": 8}
  assert max(out["max_abs_diff"]) < 1e-5, out
  assert out["forget_equal"] == [True, True]
  assert "data axis of size 15 does not split over the 8 devices of mesh axis 'data'" in out["odd_error"]


def test_cli_trains_runs_as_an_ensemble_and_scores_them(tmp_path, cli_env):
  """`--num_runs=2 --ensemble_members=2` trains both runs in one ensemble; run 1 equals the
  same run trained alone in this process, and `--mode=score` reads the per-run checkpoints."""
  workdir = tmp_path / "work"
  args = ["--dataset=digits", "--num_steps=3", "--batch_size=16", "--model=small_cnn",
          "--num_filters=4", "--noprogress", "--num_runs=2", f"--workdir={workdir}"]
  trained = subprocess.run([sys.executable, "-m", "experiments.cifar", "--mode=train", *args,
                            "--ensemble_members=2"], cwd=REPO, env=cli_env,
                           capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert "2 members (map)" in trained.stderr
  scored = subprocess.run([sys.executable, "-m", "experiments.cifar", "--mode=score", *args,
                           "--scores=el2n"], cwd=REPO, env=cli_env, capture_output=True,
                          text=True, timeout=600)
  assert scored.returncode == 0, scored.stderr[-3000:]
  from datadiet_jax.data import load_dataset
  dataset = load_dataset("digits", sort_by_class=True)
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  config = TrainConfig(num_steps=3, batch_size=16)
  seeds = (42 + 424242, 4242 + 424242)  # run 1 of the original seed scheme
  alone = str(tmp_path / "alone")
  train_run(alone, model, dataset, OptimizerConfig(), config, *seeds, progress=False)
  a, _ = restore_run_state(str(workdir / "runs" / "run_1"), 3, model, dataset, OptimizerConfig(),
                           config, *seeds)
  b, _ = restore_run_state(alone, 3, model, dataset, OptimizerConfig(), config, *seeds)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
