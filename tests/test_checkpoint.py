"""Checkpoints: the save schedule, exact-step restore (the 2021 step-0 bug), bitwise
resume of interrupted runs, corrupt checkpoints (checksums, falling back to the newest
intact one, the clear error when none is; library and CLI) and the asyncio noise of failed
restores. (Kill -9 at random moments: tests/test_kill_resume.py.)"""

import asyncio
import csv
import dataclasses
import glob
import logging
import os
import shutil
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import snapshot_files
from datadiet_jax import checkpoint as checkpoint_lib
from datadiet_jax.checkpoint import (CHECKSUM_KEY, CheckpointError, RunCheckpoints, checksums,
                                     is_save_step)
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.forgetting import ForgetStats, init_forget_stats
from datadiet_jax.train.loop import TrainConfig, build_run, restore_run_state, run_paths, train_run
from datadiet_jax.train.optimizer import OptimizerConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ helpers


def _synthetic(num_train=256, num_test=64, num_classes=10, seed=0) -> Dataset:
  """u8 8x8x1 images whose mean brightness depends on the label (learnable)."""
  rng = np.random.RandomState(seed)

  def split(n):
    labels = (np.arange(n) % num_classes).astype(np.int32)
    rng.shuffle(labels)
    noise = rng.randint(0, 120, (n, 8, 8, 1))
    images = np.clip(noise + 14 * labels[:, None, None, None], 0, 255).astype(np.uint8)
    return images, labels

  (xtr, ytr), (xte, yte) = split(num_train), split(num_test)
  return Dataset(name="synthetic", train_images=xtr, train_labels=ytr, test_images=xte,
                 test_labels=yte, class_names=tuple(f"c{i}" for i in range(num_classes)),
                 mean=np.array([xtr.mean()], np.float32), std=np.array([xtr.std()], np.float32),
                 example_order="synthetic order")


def _leaves_with_paths(tree):
  return jax.tree_util.tree_flatten_with_path(tree)


def _assert_trees_bitwise_equal(a, b, what, allow_empty=False):
  (la, ta), (lb, tb) = _leaves_with_paths(a), _leaves_with_paths(b)
  assert ta == tb, f"{what}: tree structures differ"
  assert la or allow_empty, f"{what}: empty tree"
  for (path, x), (_, y) in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, (what, jax.tree_util.keystr(path))
    # Bitwise: compare the raw bytes (so NaNs / -0.0 would also have to match).
    assert x.tobytes() == y.tobytes(), (
        f"{what}{jax.tree_util.keystr(path)} differs: max |diff| = "
        f"{np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))}")


def _rows(path, drop=("elapsed_s",)):
  with open(path) as f:
    return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def _state(seed, num=6):
  """A small TrainState-like pytree whose values all depend on `seed`."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"step": jnp.asarray(seed, jnp.int32),
          "params": {"w": jax.random.normal(keys[0], (num, 3)), "b": jax.random.normal(keys[1], (3,))},
          "opt_state": {"mu": jax.random.normal(keys[2], (num, 3))}}


# ---------------------------------------------------------------------------- schedule


def _brute_force_save_steps(num_steps, save_steps, early_save_steps, early_step):
  """The original schedule written as a set built from multiples (not modulo tests)."""
  steps = {0, num_steps}
  if early_save_steps > 0:
    steps |= {m for m in range(0, early_step + 1, early_save_steps) if m <= num_steps}
  if save_steps > 0:
    steps |= {m for m in range(0, num_steps + 1, save_steps) if m > early_step}
  return sorted(steps)


@pytest.mark.parametrize("num_steps,save_steps,early_save_steps,early_step", [
    (78_000, 390, 0, 0),         # the original: every epoch
    (7_800, 390, 100, 1_000),    # plus early checkpoints every 100 steps up to step 1,000
    (1_000, 300, 70, 450),       # intervals that do not divide anything
    (500, 0, 50, 200),           # periodic rule off: early ones, then only the last step
    (500, -1, 0, 0),             # everything off: steps 0 and last only
    (37, 5, 3, 10),              # last step not a multiple
    (10, 20, 0, 0),              # interval longer than the run
])
def test_is_save_step_matches_brute_force(num_steps, save_steps, early_save_steps, early_step):
  got = [s for s in range(num_steps + 1)
         if is_save_step(s, num_steps, save_steps, early_save_steps, early_step)]
  assert got == _brute_force_save_steps(num_steps, save_steps, early_save_steps, early_step)


def test_is_save_step_hand_examples():
  # Original schedule 200 epochs x 390 steps, early every 100 up to 1000 (hand-listed).
  on = [0, 100, 200, 900, 1000, 1170, 1560, 77_610, 78_000]
  off = [1, 99, 150, 1100, 1200, 1169, 77_999]
  assert all(is_save_step(s, 78_000, 390, 100, 1000) for s in on)
  assert not any(is_save_step(s, 78_000, 390, 100, 1000) for s in off)
  # 390 <= early_step is owned by the early rule (390 is not a multiple of 100).
  assert not is_save_step(390, 78_000, 390, 100, 1000)


# ------------------------------------------------------------ exact-step restore (2021)


def test_restore_step0_is_the_init_not_the_latest(tmp_path):
  directory = str(tmp_path / "ckpt")
  k = 7
  states = {s: _state(s + 1) for s in (0, k, 2 * k)}
  forgets = {s: ForgetStats(prev_correct=jnp.arange(5) % (s + 2) == 0,
                            num_forgets=jnp.arange(5, dtype=jnp.int32) * s,
                            ever_correct=jnp.arange(5) < s) for s in states}
  checkpoints = RunCheckpoints(directory)
  for s in states:
    checkpoints.save(s, states[s], forgets[s], {"tag": f"step {s}", "train_accum": {"count": s}})
  checkpoints.close()

  # A fresh manager (as a new process would have), templates of zeros.
  reopened = RunCheckpoints(directory)
  assert reopened.steps() == [0, k, 2 * k]
  assert reopened.latest_step() == 2 * k
  like = jax.tree_util.tree_map(jnp.zeros_like, states[0])
  forget_like = init_forget_stats(5)
  for s in (0, k, 2 * k):
    state, forget, record = reopened.restore(s, like, forget_like)
    _assert_trees_bitwise_equal(state, states[s], f"state@{s}")
    _assert_trees_bitwise_equal(forget, forgets[s], f"forget@{s}")
    assert record == {"tag": f"step {s}", "train_accum": {"count": s}}
  # Step 0 really is different from the latest (so the check above is not vacuous).
  assert not np.array_equal(states[0]["params"]["w"], states[2 * k]["params"]["w"])
  # Restoring only the state (no forgetting template) returns None for it.
  state0, none, _ = reopened.restore(0, like)
  assert none is None
  np.testing.assert_array_equal(state0["params"]["w"], states[0]["params"]["w"])

  with pytest.raises(CheckpointError, match=r"no checkpoint for step 3 .*available: \[0, 7, 14\]"):
    reopened.restore(3, like)
  with pytest.raises(CheckpointError, match=r"non-negative"):
    reopened.restore(-1, like)
  reopened.close()
  empty = RunCheckpoints(str(tmp_path / "empty"))
  assert empty.latest_step() is None
  with pytest.raises(CheckpointError, match=r"no checkpoint for step 0 .*available: none"):
    empty.restore(0, like)
  empty.close()


# ----------------------------------------------------------------------- bitwise resume

N_STEPS = 24
RESUME_CONFIG = TrainConfig(num_steps=N_STEPS, batch_size=32, eval_every_steps=4,
                            eval_batch_size=40, save_steps=10, early_save_steps=3,
                            early_step=6, augment=True)
SAVE_STEPS = [0, 3, 6, 10, 20, 24]  # hand-derived from RESUME_CONFIG
OPTIMIZER = OptimizerConfig(learning_rate=0.05, decay_epochs=(1, 2), decay_factor=0.5)
SEEDS = (11, 12)


class TinyBatchNormCNN(nn.Module):
  """conv -> BatchNorm -> relu -> mean pool -> dense: the smallest model with batch_stats.

  (The same resume check passes bitwise with `resnet18_lowres`, num_filters=2, but its
  CPU compile takes over a minute; this model covers the batch_stats path in seconds.)
  """
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.8)(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def _model(key, num_classes):
  if key == "small_cnn":
    return get_model("small_cnn", num_classes, num_filters=4)
  return TinyBatchNormCNN(num_classes)


@pytest.fixture(scope="module")
def dataset():
  return _synthetic()


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, dataset):
  """{model key: run_dir} of uninterrupted runs (run A), trained once per module."""
  cache = {}

  def get(key):
    if key not in cache:
      run_dir = str(tmp_path_factory.mktemp(f"ref_{key}") / "run")
      model = _model(key, dataset.num_classes)
      result = train_run(run_dir, model, dataset, OPTIMIZER, RESUME_CONFIG, *SEEDS,
                         progress=False)
      assert (result.final_step, result.steps_trained) == (N_STEPS, N_STEPS)
      cache[key] = run_dir
    return cache[key]

  return get


@pytest.mark.parametrize("key,stop", [("small_cnn", 10), ("small_cnn", 13),
                                      ("batchnorm", 13)])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, dataset, reference_runs,
                                                             key, stop):
  model = _model(key, dataset.num_classes)
  ref_dir = reference_runs(key)
  run_dir = str(tmp_path / "run")
  paths = run_paths(run_dir)
  last_saved = max(s for s in SAVE_STEPS if s <= stop)
  assert RunCheckpoints(run_paths(ref_dir)["checkpoints"]).steps() == SAVE_STEPS

  # Interrupted session.
  first = train_run(run_dir, model, dataset, OPTIMIZER, RESUME_CONFIG, *SEEDS, progress=False,
                    stop_after_step=stop)
  assert (first.final_step, first.steps_trained) == (stop, stop)
  assert RunCheckpoints(paths["checkpoints"]).steps() == [s for s in SAVE_STEPS if s <= stop]
  assert not os.path.exists(paths["summary"]) and not os.path.exists(paths["forget_scores"])
  interrupted_rows = [int(r["step"]) for r in _rows(paths["metrics"])]
  assert interrupted_rows == list(range(0, stop + 1, 4))
  # Identical to A so far: the checkpoint at the last save step.
  state_like, _, _, _ = build_run(model, dataset, OPTIMIZER, RESUME_CONFIG, *SEEDS)
  forget_like = init_forget_stats(dataset.num_train)
  a_mid = RunCheckpoints(run_paths(ref_dir)["checkpoints"]).restore(last_saved, state_like,
                                                                    forget_like)
  b_mid = RunCheckpoints(paths["checkpoints"]).restore(last_saved, state_like, forget_like)
  _assert_trees_bitwise_equal(b_mid[0], a_mid[0], f"state@{last_saved}")
  _assert_trees_bitwise_equal(b_mid[1], a_mid[1], f"forget@{last_saved}")
  # The record's running train metrics match too (its elapsed_s is wall time).
  assert b_mid[2]["train_accum"] == a_mid[2]["train_accum"]

  # Resumed session: restarts from the last checkpoint and recomputes the steps after it.
  second = train_run(run_dir, model, dataset, OPTIMIZER, RESUME_CONFIG, *SEEDS, progress=False)
  assert second.final_step == N_STEPS
  assert second.steps_trained == N_STEPS - last_saved
  third = train_run(run_dir, model, dataset, OPTIMIZER, RESUME_CONFIG, *SEEDS, progress=False)
  assert third.steps_trained == 0 and third.final_step == N_STEPS
  assert third.test_accuracy == second.test_accuracy

  # Final state, bitwise: params, batch_stats, opt_state (momentum + count), step, key.
  a_state, a_forget = restore_run_state(ref_dir, N_STEPS, model, dataset, OPTIMIZER,
                                        RESUME_CONFIG, *SEEDS)
  b_state, b_forget = restore_run_state(run_dir, N_STEPS, model, dataset, OPTIMIZER,
                                        RESUME_CONFIG, *SEEDS)
  assert int(b_state.step) == N_STEPS
  for field in ("params", "batch_stats", "opt_state", "key", "step"):
    # (batch_stats is {} for the CNN without BatchNorm.)
    _assert_trees_bitwise_equal(getattr(b_state, field), getattr(a_state, field), field,
                                allow_empty=field == "batch_stats" and key == "small_cnn")
  _assert_trees_bitwise_equal(b_forget, a_forget, "forget stats")
  if key == "batchnorm":
    assert jax.tree_util.tree_leaves(b_state.batch_stats), "BatchNorm stats expected"
    init_stats = state_like.batch_stats
    assert not all(np.array_equal(x, y) for x, y in zip(
        jax.tree_util.tree_leaves(b_state.batch_stats), jax.tree_util.tree_leaves(init_stats)))
  # Training happened (the comparison is not between two untouched inits).
  assert not np.array_equal(jax.tree_util.tree_leaves(a_state.params)[0],
                            jax.tree_util.tree_leaves(state_like.params)[0])

  a_scores = np.load(run_paths(ref_dir)["forget_scores"])
  b_scores = np.load(paths["forget_scores"])
  assert a_scores.shape == (dataset.num_train,)
  assert a_scores.tobytes() == b_scores.tobytes()
  a_rows, b_rows = _rows(run_paths(ref_dir)["metrics"]), _rows(paths["metrics"])
  assert [int(r["step"]) for r in a_rows] == list(range(0, N_STEPS + 1, 4))
  assert b_rows == a_rows  # every column except wall time, as written (exact text)
  assert float(a_rows[-1]["train_loss"]) > 0


# ------------------------------------------------------------------- corrupt checkpoints


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _garble(path):
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(np.random.RandomState(size).bytes(size))


def _corrupt_files(step_dir, how, only_data=False):
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True)
           if os.path.isfile(p) and (not only_data or f"{os.sep}d{os.sep}" in p)]
  assert files, f"no files under {step_dir}/state"
  for p in files:
    how(p)
  return files


@pytest.mark.parametrize("how,only_data", [(_truncate, False), (_garble, False),
                                           (_truncate, True), (_garble, True)],
                         ids=["truncate_all", "garble_all", "truncate_data", "garble_data"])
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path, how, only_data):
  directory = str(tmp_path / "ckpt")
  checkpoints = RunCheckpoints(directory)
  checkpoints.save(0, _state(1))
  checkpoints.save(5, _state(2))
  checkpoints.close()
  _corrupt_files(os.path.join(directory, "5"), how, only_data)
  reopened = RunCheckpoints(directory)
  like = jax.tree_util.tree_map(jnp.zeros_like, _state(0))
  with pytest.raises(CheckpointError) as info:
    reopened.restore(5, like)
  message = str(info.value)
  assert "step 5" in message and "corrupt" in message
  assert "delete that step's folder or use a fresh --workdir" in message
  assert "\n" not in message
  # The intact step still restores exactly.
  state, _, _ = reopened.restore(0, like)
  _assert_trees_bitwise_equal(state, _state(1), "intact step 0")
  reopened.close()


def test_restore_into_a_different_model_shape_is_a_checkpoint_error(tmp_path):
  directory = str(tmp_path / "ckpt")
  checkpoints = RunCheckpoints(directory)
  checkpoints.save(0, _state(1, num=6))
  checkpoints.close()
  reopened = RunCheckpoints(directory)
  with pytest.raises(CheckpointError, match=r"step 0 .*corrupt or does not match"):
    reopened.restore(0, jax.tree_util.tree_map(jnp.zeros_like, _state(0, num=9)))
  reopened.close()


# ------------------------------------- fallback to the newest intact checkpoint (library)


def _flip_one_byte(step_dir):
  """Flips one bit in the middle of the largest array-data file of the state: Orbax reads
  it back without error (the values are silently different); only the checksum sees it."""
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
           if os.path.isfile(p)]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  with open(path, "wb") as f:
    f.write(data)


CORRUPTIONS = {
    "truncated_array_file": lambda d: _corrupt_files(d, _truncate, only_data=True),
    "deleted_manifests": lambda d: [os.remove(os.path.join(root, "manifest.ocdbt"))
                                    for root, _, files in os.walk(os.path.join(d, "state"))
                                    if "manifest.ocdbt" in files],
    "garbage_bytes": lambda d: _corrupt_files(d, _garble),
    "empty_step_folder": lambda d: (shutil.rmtree(d), os.mkdir(d)),
    "flipped_bit": _flip_one_byte,
    "deleted_record": lambda d: shutil.rmtree(os.path.join(d, "record")),
}


def _big_state(seed):
  """_state plus an array large enough (16 KB) to be stored outside Orbax's inline nodes."""
  state = _state(seed)
  state["params"]["big"] = jax.random.normal(jax.random.PRNGKey(seed + 100), (4096,))
  return state


def _forget(seed, n=50):
  rng = np.random.RandomState(seed)
  return ForgetStats(prev_correct=jnp.asarray(rng.rand(n) < 0.5),
                     num_forgets=jnp.asarray(rng.randint(0, 4, n), jnp.int32),
                     ever_correct=jnp.asarray(rng.rand(n) < 0.8))


def test_a_missing_metadata_file_still_restores_exactly(tmp_path):
  """Orbax's _METADATA tree file is redundant when restoring onto a template with explicit
  shardings (as RunCheckpoints does): the values come back bit for bit, no fallback."""
  directory = str(tmp_path / "ckpt")
  checkpoints = RunCheckpoints(directory)
  for s in (0, 15):
    checkpoints.save(s, _big_state(s), _forget(s), {"train_accum": {"count": s}})
  checkpoints.close()
  os.remove(os.path.join(directory, "15", "state", "_METADATA"))
  like = jax.tree_util.tree_map(jnp.zeros_like, _big_state(0))
  restored = RunCheckpoints(directory).restore_latest_intact(like, _forget(0))
  assert restored.step == 15
  _assert_trees_bitwise_equal(restored.state, _big_state(15), "state@15")
  _assert_trees_bitwise_equal(restored.forget, _forget(15), "forget@15")


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, corruption):
  directory = str(tmp_path / "ckpt")
  checkpoints = RunCheckpoints(directory)
  for s in (0, 5, 10, 15):
    checkpoints.save(s, _big_state(s), _forget(s), {"train_accum": {"count": s}})
  checkpoints.close()
  CORRUPTIONS[corruption](os.path.join(directory, "15"))
  # A second bad one below it (truncated state files): both are skipped, one warning.
  _corrupt_files(os.path.join(directory, "10"), _truncate)
  bad_files = {s: snapshot_files(os.path.join(directory, str(s))) for s in (10, 15)}

  reopened = RunCheckpoints(directory)
  like, forget_like = jax.tree_util.tree_map(jnp.zeros_like, _big_state(0)), _forget(0)
  with caplog.at_level(logging.DEBUG, logger="datadiet_jax"):
    restored = reopened.restore_latest_intact(like, forget_like)
  assert restored.step == 5
  _assert_trees_bitwise_equal(restored.state, _big_state(5), "state@5")
  _assert_trees_bitwise_equal(restored.forget, _forget(5), "forget@5")
  assert restored.record == {"train_accum": {"count": 5}}
  warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
  message = warnings[0].getMessage()
  assert "\n" not in message
  assert "unreadable checkpoints 15, 10" in message and "resuming from step 5" in message
  assert "not deleted" in message and directory in message
  # Nothing deleted: the bad folders are moved aside byte for byte.
  for s in (10, 15):
    assert snapshot_files(os.path.join(directory + "_unreadable", str(s))) == bad_files[s]
  assert reopened.steps() == [0, 5]
  # The resumed run saves those steps again; a second resume restores them, silently.
  reopened.save(10, _big_state(10), _forget(10), {"train_accum": {"count": 10}})
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="datadiet_jax"):
    again = reopened.restore_latest_intact(like, forget_like)
  assert again.step == 10 and not caplog.records
  _assert_trees_bitwise_equal(again.state, _big_state(10), "state@10")
  reopened.close()


def test_flipped_bit_is_caught_by_the_checksum_not_by_orbax(tmp_path):
  directory = str(tmp_path / "ckpt")
  checkpoints = RunCheckpoints(directory)
  checkpoints.save(0, _big_state(1))
  _flip_one_byte(os.path.join(directory, "0"))
  like = jax.tree_util.tree_map(jnp.zeros_like, _big_state(0))
  with pytest.raises(CheckpointError, match=r"step 0 .*corrupt \(its state do not match the "
                     r"checksum recorded when it was saved\)"):
    checkpoints.restore(0, like)
  # Orbax alone returns the damaged values without complaint (what the checksum is for).
  raw = checkpoints._manager.restore(0, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(like)))["state"]
  assert not np.array_equal(raw["params"]["big"], _big_state(1)["params"]["big"])
  checkpoints.close()


def test_checksums_hash_every_leaf_and_the_record():
  state, forget = _state(3), _forget(3)
  base = checksums(state, forget, {"a": 1.5})
  assert set(base) == {"state", "forget", "record"}
  assert checksums(state, None, {"a": 1.5}).keys() == {"state", "record"}
  assert checksums(state, forget, {"a": 1.5, CHECKSUM_KEY: {"x": 1}}) == base
  changed = jax.tree_util.tree_map(lambda x: x, state)
  changed["params"]["b"] = changed["params"]["b"].at[1].add(1e-6)
  assert checksums(changed, forget, {"a": 1.5})["state"] != base["state"]
  assert checksums(state, forget, {"a": 1.25})["record"] != base["record"]
  flipped = dataclasses.replace(forget, ever_correct=~forget.ever_correct)
  assert checksums(state, flipped, {"a": 1.5})["forget"] != base["forget"]
  # Independent of the hashing code: SHA-256 of path, dtype/shape and bytes, in order.
  import hashlib
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.asarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
  assert base["state"] == digest.hexdigest()


def test_no_intact_checkpoint_is_the_clear_error_and_nothing_moves(tmp_path):
  directory = str(tmp_path / "ckpt")
  checkpoints = RunCheckpoints(directory)
  for s in (0, 5):
    checkpoints.save(s, _big_state(s))
  checkpoints.close()
  _corrupt_files(os.path.join(directory, "5"), _truncate)
  CORRUPTIONS["empty_step_folder"](os.path.join(directory, "0"))
  before = snapshot_files(directory)
  reopened = RunCheckpoints(directory)
  like = jax.tree_util.tree_map(jnp.zeros_like, _big_state(0))
  with pytest.raises(CheckpointError) as info:
    reopened.restore_latest_intact(like)
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(f"checkpoint for step 5 in {directory} is corrupt"), message
  assert "delete that step's folder or use a fresh --workdir" in message
  assert "no older checkpoint is intact either: steps [0]" in message
  assert snapshot_files(directory) == before and not os.path.exists(directory + "_unreadable")
  assert RunCheckpoints(str(tmp_path / "none")).restore_latest_intact(like) is None
  reopened.close()


def _unraisable(error, obj=None):
  return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                               exc_traceback=error.__traceback__, err_msg=None, object=obj)


def test_only_the_noise_of_abandoned_reads_is_filtered():
  # The real exception: a callback scheduled on an event loop Orbax already closed.
  loop = asyncio.new_event_loop()
  loop.close()
  with pytest.raises(RuntimeError) as closed:
    loop.call_soon_threadsafe(print)
  assert str(closed.value) == "Event loop is closed"
  assert checkpoint_lib._is_abandoned_read_noise(_unraisable(closed.value))
  # The same message raised elsewhere, another error, or one with an object: not filtered.
  try:
    raise RuntimeError("Event loop is closed")
  except RuntimeError as error:
    assert not checkpoint_lib._is_abandoned_read_noise(_unraisable(error))
  try:
    raise ValueError("Event loop is closed")
  except ValueError as error:
    assert not checkpoint_lib._is_abandoned_read_noise(_unraisable(error))
  assert not checkpoint_lib._is_abandoned_read_noise(_unraisable(closed.value, obj=object()))

  # An abandoned coroutine of Orbax's restore code (an exception while it is closed) is
  # filtered; one of this test's own is not.
  from orbax.checkpoint._src.serialization import serialization
  orbax_coroutine = serialization._read_array_index_and_device_put
  assert os.path.abspath(orbax_coroutine.__code__.co_filename).startswith(
      checkpoint_lib._ORBAX_DIR)

  async def mine():
    return None

  own = mine()
  error = RuntimeError("boom")
  assert not checkpoint_lib._is_abandoned_read_noise(_unraisable(error, obj=own))
  own.close()
  fake_orbax = types.SimpleNamespace(cr_code=orbax_coroutine.__code__)
  assert not checkpoint_lib._is_abandoned_read_noise(_unraisable(error, obj=fake_orbax))


# ----------------------------------------------------------------- corrupt checkpoints (CLI)


def _cli_command(workdir):
  return [sys.executable, "-m", "experiments.cifar", "--mode=train", f"--workdir={workdir}",
          "--dataset=digits", "--model=small_cnn", "--num_filters=4", "--augment=false",
          "--batch_size=32", "--num_steps=20", "--save_steps=5", "--eval_every_steps=-1",
          "--noprogress"]


def test_cli_resume_past_a_corrupt_checkpoint_is_bit_identical_and_quiet(tmp_path, cli_env):
  """A normal run, a resume past a corrupt newest checkpoint (one warning line, no
  traceback, the uninterrupted result bit for bit), and a resume where no checkpoint is
  intact (today's one-line error, exit 2, nothing moved)."""
  reference_dir, workdir, hopeless = (tmp_path / "reference", tmp_path / "work",
                                      tmp_path / "hopeless")
  reference = subprocess.Popen(_cli_command(reference_dir), cwd=REPO, env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  interrupted = subprocess.run(_cli_command(workdir) + ["--stop_after_step=12"], cwd=REPO,
                               env=cli_env, capture_output=True, text=True, timeout=300)
  assert interrupted.returncode == 0, interrupted.stderr[-3000:]
  checkpoint_dir = run_paths(str(workdir / "runs" / "run_0"))["checkpoints"]
  assert sorted(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit()) == [0, 5, 10]
  shutil.copytree(workdir, hopeless)
  # Truncated data files of the forgetting statistics: Orbax abandons the sibling reads
  # of the one that fails, which used to print "Event loop is closed" tracebacks.
  files = [p for p in glob.glob(os.path.join(checkpoint_dir, "10", "forget", "**", "d", "*"),
                                recursive=True) if os.path.isfile(p)]
  assert files
  for path in files:
    _truncate(path)

  resumed = subprocess.run(_cli_command(workdir), cwd=REPO, env=cli_env, capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for text in ("Traceback", "Event loop is closed", "Exception ignored"):
    assert text not in resumed.stderr, resumed.stderr[-3000:]
  warning_lines = [line for line in resumed.stderr.splitlines() if "unreadable" in line]
  assert len(warning_lines) == 1, resumed.stderr[-3000:]
  assert "checkpoint 10 in" in warning_lines[0] and "resuming from step 5" in warning_lines[0]
  assert "resuming from checkpoint step 5" in resumed.stderr
  assert os.path.isdir(checkpoint_dir + "_unreadable/10")  # kept, not deleted

  ref_out, ref_err = reference.communicate(timeout=300)
  assert reference.returncode == 0, ref_err[-3000:]
  assert "Traceback" not in ref_err and "Event loop" not in ref_err, ref_err[-3000:]
  a = run_paths(str(reference_dir / "runs" / "run_0"))
  b = run_paths(str(workdir / "runs" / "run_0"))
  assert open(a["forget_scores"], "rb").read() == open(b["forget_scores"], "rb").read()
  assert _rows(a["metrics"]) == _rows(b["metrics"])
  # Both final checkpoints restored without a template (raw arrays), compared bitwise.
  ref_ck, run_ck = RunCheckpoints(a["checkpoints"]), RunCheckpoints(b["checkpoints"])
  raw = [c._manager.restore(20, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), forget=ocp.args.StandardRestore()))
         for c in (ref_ck, run_ck)]
  _assert_trees_bitwise_equal(raw[1]["state"], raw[0]["state"], "final state")
  _assert_trees_bitwise_equal(raw[1]["forget"], raw[0]["forget"], "final forget stats")
  ref_ck.close()
  run_ck.close()

  # No checkpoint intact: the clear one-line error, exit 2, nothing moved or written.
  hopeless_dir = run_paths(str(hopeless / "runs" / "run_0"))["checkpoints"]
  for step in (0, 5, 10):
    _corrupt_files(os.path.join(hopeless_dir, str(step)), _truncate)
  before = snapshot_files(hopeless_dir)
  failed = subprocess.run(_cli_command(hopeless), cwd=REPO, env=cli_env, capture_output=True,
                          text=True, timeout=300)
  assert failed.returncode == 2, failed.stderr[-3000:]
  error_lines = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1, failed.stderr[-3000:]
  line = error_lines[0]
  assert "checkpoint for step 10" in line and "corrupt" in line, line
  assert "delete that step's folder or use a fresh --workdir" in line, line
  assert "no older checkpoint is intact either: steps [0, 5]" in line, line
  for text in ("Traceback", "Event loop is closed", "Exception ignored"):
    assert text not in failed.stderr, failed.stderr[-3000:]
  assert snapshot_files(hopeless_dir) == before
  assert not os.path.exists(hopeless_dir + "_unreadable")
  assert not os.path.exists(os.path.join(hopeless, "runs", "run_0", "summary.json"))


def test_forgetting_statistics_load_without_the_runs_state_structure(tmp_path, dataset):
  """load_forget_stats restores the state "as saved" (state_like=None): its checksum is
  taken of the TrainState, so only the forgetting statistics' checksum applies (the state's
  made every figure-1 run with forgetting fail as 'corrupt')."""
  from datadiet_jax.scores import load_forget_stats
  model = _model("small_cnn", dataset.num_classes)
  run_dir = str(tmp_path / "run")
  train_run(run_dir, model, dataset, OPTIMIZER, RESUME_CONFIG, *SEEDS, progress=False)
  _, forget = restore_run_state(run_dir, N_STEPS, model, dataset, OPTIMIZER, RESUME_CONFIG,
                                *SEEDS)
  loaded = load_forget_stats(run_paths(run_dir)["checkpoints"], N_STEPS, dataset.num_train)
  _assert_trees_bitwise_equal(loaded, forget, "forget stats")


def test_a_garbage_collected_orbax_task_with_an_exception_is_not_logged(caplog):
  """The flake this fixes: a failed restore's sibling read (an asyncio Task running an
  Orbax coroutine) finished with an exception and was collected during a LATER restore, so
  asyncio logged "Task exception was never retrieved" next to that restore's one warning.
  Real tasks, real asyncio handler: an Orbax coroutine's is dropped, one of ours is kept."""
  from orbax.checkpoint._src.serialization import serialization
  checkpoint_lib._filter_abandoned_read_noise()

  async def ours():
    raise ValueError("not Orbax")

  def collected_task_log(coroutine):
    def finished_task(loop):
      task = loop.create_task(coroutine)
      loop.run_until_complete(asyncio.wait([task]))  # done, exception never retrieved
      return task
    return _asyncio_log_when_collected(caplog, finished_task)

  with caplog.at_level(logging.DEBUG):
    orbax_logged = collected_task_log(serialization.async_deserialize(None, None))
    ours_logged = collected_task_log(ours())
  assert orbax_logged == []
  assert len(ours_logged) == 1 and ours_logged[0].startswith(
      "Task exception was never retrieved")


def test_a_garbage_collected_tensorstore_future_with_an_exception_is_not_logged(caplog):
  """The same flake's other form (CI, 2026-12-06): the abandoned sibling read was a bare
  Future holding TensorStore's NOT_FOUND error, logged as "Future exception was never
  retrieved" during the next case's restore. A real TensorStore error is dropped; a Future
  with any other exception is still logged."""
  import tensorstore as ts
  checkpoint_lib._filter_abandoned_read_noise()
  try:
    ts.open({"driver": "zarr", "kvstore": {"driver": "memory"}, "path": "missing/"}).result()
  except ValueError as e:
    tensorstore_error = e
  assert "tensorstore_spec" in str(tensorstore_error)

  def collected_future_log(exception):
    def failed_future(loop):
      future = loop.create_future()
      future.set_exception(exception)
      return future
    return _asyncio_log_when_collected(caplog, failed_future)

  with caplog.at_level(logging.DEBUG):
    tensorstore_logged = collected_future_log(tensorstore_error)
    ours_logged = collected_future_log(ValueError("not TensorStore"))
  assert tensorstore_logged == []
  assert len(ours_logged) == 1 and ours_logged[0].startswith(
      "Future exception was never retrieved")


def _asyncio_log_when_collected(caplog, make) -> list[str]:
  """What the `asyncio` logger says when the awaitable make(loop) returns (holding an
  exception nobody retrieved) is garbage-collected."""
  import gc
  loop = asyncio.new_event_loop()
  try:
    awaitable = make(loop)
    caplog.clear()
    del awaitable
    gc.collect()
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]
  finally:
    loop.close()
