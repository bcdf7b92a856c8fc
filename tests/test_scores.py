"""Tests of datadiet_jax.scores: definitions on hand-computed logits, GraNd against brute
force and the original's jacrev, ensembles, GraNd at init, step-0 restore, score files."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datadiet_jax import scores as S
from datadiet_jax.checkpoint import CheckpointError, RunCheckpoints
from datadiet_jax.models import get_model
from datadiet_jax.train.ensemble import stack_trees
from datadiet_jax.train.forgetting import ForgetStats
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer
from datadiet_jax.train.state import TrainState, init_variables

IMAGE_SHAPE = (8, 8, 3)
MEAN = np.array([120.0, 115.0, 100.0], np.float32)
STD = np.array([60.0, 62.0, 66.0], np.float32)


def identity(variables, logits):
  """apply_fn whose 'images' are the logits themselves."""
  del variables
  return logits


def _score(name, logits, labels):
  fn = S.get_score_fn(name)
  return np.asarray(fn(identity, {}, jnp.asarray(logits, jnp.float32),
                       jnp.asarray(labels, jnp.int32)))


# ---- definitions on fixed logits -------------------------------------------------------

def test_scores_on_uniform_logits():
  logits, labels = np.zeros((1, 4)), [0]
  np.testing.assert_allclose(_score("el2n", logits, labels), [math.sqrt(0.75)], rtol=1e-6)
  np.testing.assert_allclose(_score("l1_error", logits, labels), [1.5], rtol=1e-6)
  np.testing.assert_allclose(_score("max_margin", logits, labels), [0.0], atol=1e-7)
  np.testing.assert_allclose(_score("sum_margin", logits, labels), [0.0], atol=1e-7)
  np.testing.assert_allclose(_score("top2_margin", logits, labels), [0.0], atol=1e-7)
  np.testing.assert_allclose(_score("entropy", logits, labels), [math.log(4)], rtol=1e-6)
  np.testing.assert_allclose(_score("loss", logits, labels), [math.log(4)], rtol=1e-6)


def test_scores_on_known_probabilities():
  p = np.array([0.5, 0.3, 0.2])
  logits, labels = np.log(p)[None], [1]
  np.testing.assert_allclose(_score("el2n", logits, labels), [math.sqrt(0.25 + 0.49 + 0.04)],
                             rtol=1e-6)
  np.testing.assert_allclose(_score("l1_error", logits, labels), [1.4], rtol=1e-6)
  np.testing.assert_allclose(_score("max_margin", logits, labels), [0.2], rtol=1e-5)
  np.testing.assert_allclose(_score("sum_margin", logits, labels), [0.2 - 0.1], rtol=1e-5)
  np.testing.assert_allclose(_score("top2_margin", logits, labels), [0.2], rtol=1e-5)
  np.testing.assert_allclose(_score("entropy", logits, labels), [-(p * np.log(p)).sum()],
                             rtol=1e-6)
  np.testing.assert_allclose(_score("loss", logits, labels), [-math.log(0.3)], rtol=1e-6)


def test_scores_on_one_hot_prediction_with_zero_probabilities():
  # p = (1, 0, 0): entropy uses 0 log 0 = 0; the label-aware scores see a perfect / a
  # completely wrong prediction.
  logits = np.array([[0.0, -np.inf, -np.inf], [0.0, -np.inf, -np.inf]])
  labels = [0, 2]
  np.testing.assert_allclose(_score("entropy", logits, labels), [0.0, 0.0], atol=0)
  np.testing.assert_allclose(_score("el2n", logits, labels), [0.0, math.sqrt(2)], rtol=1e-6)
  np.testing.assert_allclose(_score("l1_error", logits, labels), [0.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(_score("max_margin", logits, labels), [-1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(_score("sum_margin", logits, labels), [-2.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(_score("top2_margin", logits, labels), [1.0, 1.0], rtol=1e-6)
  assert np.isfinite(_score("entropy", np.array([[0.0, -200.0, -200.0]]), [0])).all()


def test_sum_margin_identity_and_input_norm():
  logits = np.random.default_rng(0).normal(size=(6, 5)) * 3
  labels = np.array([0, 1, 2, 3, 4, 0])
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(_score("sum_margin", logits, labels),
                             1 - 5 * p[np.arange(6), labels], atol=1e-6)
  images = jnp.asarray(np.array([[[[3.0]], [[4.0]]]], np.float32))  # [1, 2, 1, 1]
  np.testing.assert_allclose(S.input_norm(None, None, images, None), [5.0], rtol=1e-6)


def test_unknown_score_name_lists_valid_names():
  with pytest.raises(S.ScoreError, match="unknown score 'el2m'.*el2n.*grand"):
    S.get_score_fn("el2m")
  with pytest.raises(S.ScoreError, match="checkpoint"):
    S.get_score_fn("forgetting")
  assert issubclass(S.ScoreError, ValueError)
  assert set(S.SCORE_NAMES) == {"el2n", "l1_error", "max_margin", "sum_margin", "top2_margin",
                                "entropy", "loss", "grand", "input_norm",
                                "el2n_sum", "el2n_mean", "grand_head"}  # the last 3: text


# ---- GraNd -----------------------------------------------------------------------------

def _perturbed(tree, seed, scale):
  """`tree` with every leaf multiplied by exp(scale * noise) and shifted by scale * noise."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  leaves = [x * jnp.exp(scale * jax.random.normal(k, x.shape))
            + scale * jax.random.normal(jax.random.fold_in(k, 1), x.shape)
            for x, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _with_running_stats(variables, seed=0):
  """BN running stats that are not the (0, 1) of a fresh init, so eval mode matters."""
  stats = _perturbed(variables["batch_stats"], seed, 0.3)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.abs(x) + 0.1 if path[-1].key == "var" else x, stats)
  return {**variables, "batch_stats": stats}


def _data(n, seed=0, num_classes=10):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, *IMAGE_SHAPE), dtype=np.uint8)
  return images, rng.integers(0, num_classes, size=n).astype(np.int32)


def _normalized(images):
  return np.asarray((images.astype(np.float32) - MEAN) / STD)


@pytest.fixture(scope="module")
def resnet():
  """(model, apply_fn, jitted grand, init variables of seed 7): one init compile per module."""
  model = get_model("resnet18_lowres", 10, 4)
  apply_fn = S.eval_apply_fn(model)
  grand_fn = jax.jit(lambda v, x, y: S.grand(apply_fn, v, x, y))
  return model, apply_fn, grand_fn, init_variables(model, 7, IMAGE_SHAPE)


@pytest.fixture(scope="module")
def small():
  """(SimpleCNN model, apply_fn, init variables of seed 42)."""
  model = get_model("small_cnn", 10, 4)
  return model, S.eval_apply_fn(model), init_variables(model, 42, IMAGE_SHAPE)


def _brute_force_grand(model, variables, images, labels):
  """One jax.grad per example (a Python loop over batches of one; the gradient of a single
  example's loss, jitted once and called per example), norm accumulated in float64."""
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  @jax.jit
  @jax.grad
  def example_grad(p, image, label):
    logits = model.apply({**rest, "params": p}, image[None], train=False)
    return -jax.nn.log_softmax(logits)[0, label]

  out = []
  for i in range(len(images)):
    g = example_grad(params, images[i], labels[i])
    out.append(math.sqrt(sum(float(np.sum(np.asarray(x, np.float64)**2))
                             for x in jax.tree_util.tree_leaves(g))))
  return np.array(out)


def test_grand_vmap_matches_brute_force_and_jacrev(resnet):
  model, apply_fn, grand_fn, init = resnet
  variables = _with_running_stats(init)
  images, labels = _data(3, seed=1)
  x = jnp.asarray(_normalized(images))
  vmapped = np.asarray(grand_fn(variables, x, labels))
  jacrev = np.asarray(jax.jit(lambda v, x, y: S.grand_jacrev(apply_fn, v, x, y))(
      variables, x, labels))
  brute = _brute_force_grand(model, variables, x[:2], labels[:2])
  np.testing.assert_allclose(vmapped[:2], brute, rtol=2e-5)
  np.testing.assert_allclose(jacrev, vmapped, rtol=2e-5)
  assert np.all(vmapped > 0)
  # Eval mode: the running statistics matter (and examples are independent, as the
  # brute force scores each alone).
  assert not np.allclose(np.asarray(grand_fn(init, x, labels)), vmapped, rtol=1e-3)


def test_per_example_grads_cover_params_only(small):
  model, apply_fn, variables = small
  images, labels = _data(3)
  grads = jax.jit(lambda v, x, y: S.per_example_grads(apply_fn, v, x, y))(
      variables, _normalized(images), labels)
  assert (jax.tree_util.tree_structure(grads)
          == jax.tree_util.tree_structure(variables["params"]))
  for g, p in zip(jax.tree_util.tree_leaves(grads),
                  jax.tree_util.tree_leaves(variables["params"])):
    assert g.shape == (3, *p.shape)
  with pytest.raises(S.ScoreError, match="no 'params'"):
    S.grand(apply_fn, {"batch_stats": {}}, _normalized(images), labels)


# ---- ensembles -------------------------------------------------------------------------

def test_ensemble_equals_members_scored_alone(resnet):
  """Members vmapped or mapped sequentially (GraNd's memory-bounded path): both equal
  each member scored alone."""
  model, apply_fn, grand_fn, init = resnet
  members = [_with_running_stats(init, seed=0),
             {**_with_running_stats(init, seed=1), "params": _perturbed(init["params"], 1, 0.1)},
             {**_with_running_stats(init, seed=2), "params": _perturbed(init["params"], 2, 0.1)}]
  stacked = stack_trees(members)
  images, labels = _data(11, seed=2)  # 11 = 2 chunks of 5 + a padded chunk of 1
  x = jnp.asarray(_normalized(images))
  el2n_fn = jax.jit(lambda v, x, y: S.el2n(apply_fn, v, x, y))
  for score_name, alone_fn, sequential in (("grand", grand_fn, True), ("grand", grand_fn, None),
                                           ("el2n", el2n_fn, None)):
    fn = S.make_ensemble_score_fn(score_name, apply_fn, MEAN, STD, sequential_members=sequential)
    per_member = S.ensemble.apply_in_chunks(fn, stacked, images, labels, 5, progress=False)
    assert fn._cache_size() == 1  # one compilation serves every chunk, the padded one too
    alone = np.stack([np.asarray(alone_fn(v, x, labels)) for v in members])
    assert per_member.shape == (3, 11) and per_member.dtype == np.float32
    np.testing.assert_allclose(per_member, alone, rtol=2e-5, atol=1e-7)


def test_score_ensemble_mean_std_and_inputs(small):
  model, apply_fn, variables = small
  members = [variables, {**variables, "params": _perturbed(variables["params"], 3, 0.2)}]
  stacked = stack_trees(members)
  images, labels = _data(7)
  mean, std, from_u8 = S.score_ensemble("loss", apply_fn, stacked, images, labels,
                                        batch_size=3, mean=MEAN, std=STD, progress=False)
  x = jnp.asarray(_normalized(images))
  alone = np.stack([np.asarray(S.loss(apply_fn, v, x, labels)) for v in members])
  np.testing.assert_allclose(from_u8, alone, rtol=2e-5)
  np.testing.assert_allclose(mean, alone.mean(0), rtol=2e-5)
  np.testing.assert_allclose(std, alone.std(0), rtol=1e-3, atol=1e-6)
  assert np.all(std > 0)
  # Normalized float images give the same scores as u8 images normalized on device.
  _, _, from_float = S.score_ensemble("loss", apply_fn, stacked, _normalized(images), labels,
                                      batch_size=3, progress=False)
  np.testing.assert_allclose(from_float, from_u8, rtol=1e-5)
  with pytest.raises(S.ScoreError, match="mean and std"):
    S.score_ensemble("el2n", apply_fn, stacked, images, labels, progress=False)
  with pytest.raises(S.ScoreError, match=r"labels must be i32\[7\]"):
    S.score_ensemble("el2n", apply_fn, stacked, images, labels[:3], mean=MEAN, std=STD,
                     progress=False)
  with pytest.raises(S.ScoreError, match="unknown score"):
    S.score_ensemble("nope", apply_fn, stacked, images, labels, mean=MEAN, std=STD,
                     progress=False)
  with pytest.raises(S.ScoreError, match="leading ensemble axis"):
    S.score_ensemble("el2n", apply_fn, variables, images, labels, mean=MEAN, std=STD,
                     progress=False)


def test_grand_at_init_equals_inits_scored_one_by_one(small):
  model, apply_fn, init_42 = small  # init_42 = init_variables(model, 42, IMAGE_SHAPE)
  seeds = [42, 42 + 424242]
  images, labels = _data(6, seed=3)
  mean, std, per_member = S.grand_at_init(model, seeds, images, labels, batch_size=4,
                                          mean=MEAN, std=STD, progress=False)
  x = jnp.asarray(_normalized(images))
  grand_fn = jax.jit(lambda v, x, y: S.grand(apply_fn, v, x, y))
  inits = [init_42, init_variables(model, seeds[1], IMAGE_SHAPE)]
  expected = np.stack([np.asarray(grand_fn(v, x, labels)) for v in inits])
  np.testing.assert_allclose(per_member, expected, rtol=2e-5)
  np.testing.assert_allclose(mean, expected.mean(0), rtol=2e-5)
  np.testing.assert_allclose(std, expected.std(0), rtol=1e-3, atol=1e-6)
  assert not np.allclose(per_member[0], per_member[1], rtol=1e-2)  # distinct inits
  # PRNG keys work as well as seeds, and member r is init_variables(model, seeds[r]).
  keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  stacked = S.init_stacked_variables(model, keys, IMAGE_SHAPE)
  for r, init in enumerate(inits):
    for a, b in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(init)):
      np.testing.assert_allclose(a[r], b, rtol=1e-6, atol=1e-7)


def test_default_chunk_fits_memory():
  """XLA's buffer estimate for ResNet18-64 GraNd, R = 10, default chunk (compile only).

  The default GraNd method is ghost norms with the 10 members vmapped (0.90 GiB of
  temporaries per member); vmap(grad) with vmapped members would need 57 GB of gradients.
  """
  model = get_model("resnet18_lowres", 10, 64)
  stacked = jax.eval_shape(lambda: S.init_stacked_variables(model, list(range(10)),
                                                            (32, 32, 3)))
  fn = S.make_ensemble_score_fn("grand", S.eval_apply_fn(model), MEAN, STD)
  b = S.DEFAULT_BATCH_SIZE
  compiled = fn.lower(stacked, jax.ShapeDtypeStruct((b, 32, 32, 3), jnp.uint8),
                      jax.ShapeDtypeStruct((b,), jnp.int32)).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip("this backend gives no memory analysis")
  total = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
  assert total < 12 * 2**30, f"{total / 2**30:.1f} GiB"


# ---- checkpoints: step 0 is the initialisation -----------------------------------------

def test_step0_checkpoint_is_the_init_not_the_latest(tmp_path, resnet):
  model, apply_fn, grand_fn, init = resnet  # init = init_variables(model, 7, IMAGE_SHAPE)
  tx = make_optimizer(OptimizerConfig(schedule="constant"), steps_per_epoch=10)
  fresh = TrainState(step=jnp.zeros((), jnp.int32), params=init["params"],
                     batch_stats=init["batch_stats"], opt_state=tx.init(init["params"]),
                     key=jax.random.PRNGKey(8))
  run = str(tmp_path / "run")
  checkpoints = RunCheckpoints(run)
  checkpoints.save(0, fresh)
  k = 5
  for step in (k, 2 * k):
    checkpoints.save(step, fresh.replace(
        step=jnp.asarray(step, jnp.int32), params=_perturbed(fresh.params, step, 0.05),
        batch_stats=_with_running_stats(init, step)["batch_stats"]))
  checkpoints.close()
  images, labels = _data(3, seed=4)  # the shape the fixture's grand_fn has compiled
  x = jnp.asarray(_normalized(images))
  expected = np.asarray(grand_fn(init, x, labels))
  np.testing.assert_allclose(grand_fn(S.load_variables(run, 0, fresh), x, labels), expected,
                             rtol=1e-6)
  latest = S.load_variables(run, 2 * k, fresh)
  assert not np.allclose(grand_fn(latest, x, labels), expected, rtol=1e-2)
  # Two runs stacked: the same init twice.
  stacked = S.load_stacked_variables([run, run], 0, fresh)
  for a, b in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(init)):
    np.testing.assert_array_equal(a, np.stack([b, b]))
  with pytest.raises(CheckpointError, match=r"no checkpoint for step 3 .*\[0, 5, 10\]"):
    S.load_variables(run, 3, fresh)


def test_forgetting_scores_from_checkpoint(tmp_path):
  stats = ForgetStats(prev_correct=jnp.array([True, False, True, False]),
                      num_forgets=jnp.array([0, 3, 1, 0], jnp.int32),
                      ever_correct=jnp.array([True, True, True, False]))
  checkpoints = RunCheckpoints(str(tmp_path / "run"))
  checkpoints.save(20, {"w": jnp.ones(2)}, stats)
  checkpoints.close()
  scores = S.load_forgetting_scores(str(tmp_path / "run"), 20, 4)
  np.testing.assert_array_equal(scores, [0.0, 3.0, 1.0, np.inf])
  mean, _, per_run = S.mean_forgetting_scores([str(tmp_path / "run")] * 2, 20, 4)
  np.testing.assert_array_equal(mean, [0.0, 3.0, 1.0, np.inf])
  assert per_run.shape == (2, 4)
  with pytest.raises(CheckpointError, match=r"no checkpoint for step 0 .*\[20\]"):
    S.load_forgetting_scores(str(tmp_path / "run"), 0, 4)


# ---- score files -----------------------------------------------------------------------

def test_save_and_load_scores_with_sidecar(tmp_path):
  per_run = np.random.default_rng(0).random((3, 7)).astype(np.float32)
  path = S.save_scores(str(tmp_path), "el2n", 390, per_run.mean(0), per_run.std(0), per_run,
                       provenance={"seeds": [1, 2, 3], "dataset": "cifar10",
                                   "example_order": "image folder order"})
  assert path == str(tmp_path / "scores" / "el2n" / "step_390.npy")
  np.testing.assert_allclose(S.load_scores(str(tmp_path), "el2n", 390, 7), per_run.mean(0))
  np.testing.assert_allclose(S.load_scores(path, "el2n", 390), per_run.mean(0))
  np.testing.assert_allclose(np.load(tmp_path / "scores" / "el2n" / "step_390.runs.npy"),
                             per_run)
  assert os.path.exists(tmp_path / "scores" / "el2n" / "step_390.std.npy")
  record = json.loads((tmp_path / "scores" / "el2n" / "step_390.json").read_text())
  assert record["score"] == "el2n" and record["step"] == 390 and record["num_runs"] == 3
  assert record["seeds"] == [1, 2, 3] and record["dataset"] == "cifar10"
  assert record["bn_mode"].startswith("eval")
  assert "jax" in record["provenance"]["versions"] and "git_commit" in record["provenance"]
  assert S.load_score_record(str(tmp_path), "el2n", 390)["num_examples"] == 7
  assert not [f for f in os.listdir(tmp_path / "scores" / "el2n") if f.startswith(".tmp")]


def test_load_scores_errors(tmp_path):
  S.save_scores(str(tmp_path), "grand", 0, np.ones(5, np.float32))
  with pytest.raises(S.ScoreError, match="has 5 scores but the dataset has 6 examples"):
    S.load_scores(str(tmp_path), "grand", 0, num_examples=6)
  with pytest.raises(S.ScoreError, match=r"no 'grand' scores for step 7.*available steps: \[0\]"):
    S.load_scores(str(tmp_path), "grand", 7)
  with pytest.raises(S.ScoreError, match="available steps: none"):
    S.load_scores(str(tmp_path), "el2n", 0)
  with pytest.raises(S.ScoreError, match="unknown score"):
    S.load_scores(str(tmp_path), "grandd", 0)
  bad = np.ones(5, np.float32)
  bad[[1, 3]] = np.nan
  os.makedirs(tmp_path / "scores" / "loss")
  np.save(tmp_path / "scores" / "loss" / "step_1.npy", bad)
  with pytest.raises(S.ScoreError, match="2 of 5 scores are NaN"):
    S.load_scores(str(tmp_path), "loss", 1)
  with pytest.raises(S.ScoreError, match="NaN"):
    S.save_scores(str(tmp_path), "loss", 2, bad)
  assert not os.path.exists(tmp_path / "scores" / "loss" / "step_2.npy")


def test_load_original_layout(tmp_path):
  run = tmp_path / "exps" / "full" / "run_0"
  for folder, step, values in (("error_l2_norm_scores", 7800, [0.1, 0.9, 0.5]),
                               ("grad_norm_scores", 0, [3.0, 1.0, 2.0]),
                               ("forget_scores", 78000, [0.0, np.inf, 2.0])):
    os.makedirs(run / folder)
    np.save(run / folder / f"ckpt_{step}.npy", np.array(values))
  np.testing.assert_allclose(S.load_scores(str(run), "el2n", 7800, 3), [0.1, 0.9, 0.5])
  np.testing.assert_allclose(S.load_scores(str(run), "error_l2_norm", 7800), [0.1, 0.9, 0.5])
  np.testing.assert_allclose(S.load_scores(str(run), "grand", 0, 3), [3.0, 1.0, 2.0])
  np.testing.assert_array_equal(S.load_scores(str(run), "forgetting", 78000, 3),
                                [0.0, np.inf, 2.0])
  assert S.load_score_record(str(run), "grand", 0) is None
  with pytest.raises(S.ScoreError, match=r"grad_norm_scores/ckpt_390\.npy.*available steps: \[0\]"):
    S.load_scores(str(run), "grand", 390)
  assert S.available_steps(str(run), "forgetting") == [78000]
