"""Moderate-DS and D2 as Figure-1 methods: a tiny sweep on the embedded digits runs end to
end, its features file is the score runs' final-checkpoint features (recomputed here run by
run), and its kept subsets are what the numpy brute-force references select from that file
and the EL2N scores; bad method specs and D2 options fail with one clear error."""

import os

import numpy as np
import pytest

from datadiet_jax.data.normalize import normalize
from datadiet_jax.data.sources import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.pipelines.figure1 import (Figure1Config, features_path, parse_method,
                                            run_figure1)
from datadiet_jax.scores.checkpoints import load_variables
from datadiet_jax.scores.features import penultimate_features
from datadiet_jax.train.loop import TrainConfig, build_run, run_paths
from datadiet_jax.train.optimizer import OptimizerConfig

from test_geometry_select import d2_reference, moderate_reference

SCORE_STEP, SCORE_TRAIN, PRUNE = 8, 12, 0.5
D2 = dict(d2_neighbors=4, d2_gamma_forward=0.5, d2_gamma_reverse=0.2)


def _seeds(run):
  return 42 + run * 424242, 4242 + run * 424242


def _config(methods=("moderate", "d2"), **changes):
  base = dict(methods=tuple(parse_method(m) for m in methods), prune_fractions=(PRUNE,),
              score_names=("el2n",), num_score_runs=2, score_step=SCORE_STEP,
              score_train_steps=SCORE_TRAIN, grand_init_runs=1, num_seeds=1,
              include_full=False, **D2)
  base.update(changes)
  return Figure1Config(**base)


def test_moderate_and_d2_sweep_selects_what_the_references_select(tmp_path):
  dataset = load_dataset("digits", sort_by_class=True)
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  optimizer = OptimizerConfig()
  train = TrainConfig(num_steps=10, batch_size=32, eval_every_steps=-1, save_steps=-1,
                      augment=False)
  workdir = str(tmp_path / "work")
  config = _config()
  out = run_figure1(workdir, dataset, model, optimizer, train, config, _seeds, progress=False)
  assert [r["key"] for r in out["rows"]] == ["moderate", "el2n-d2"]
  assert [r["method"] for r in out["rows"]] == ["Moderate-DS (features)",
                                                f"EL2N@{SCORE_STEP}, D2 (features)"]
  n = dataset.num_train
  keep = n - int(np.floor(n * PRUNE))

  # The features file: the two score runs' final-checkpoint features, side by side.
  features = np.load(features_path(workdir, config))
  assert features.shape == (n, 2 * 8) and features.dtype == np.float32
  state_like = build_run(model, dataset, optimizer, train, *_seeds(0))[0]
  images = normalize(dataset.train_images, dataset.mean, dataset.std)
  for r in range(2):
    variables = load_variables(run_paths(os.path.join(workdir, "score_runs", "runs",
                                                      f"run_{r}"))["checkpoints"],
                               SCORE_TRAIN, state_like)
    np.testing.assert_allclose(features[:, 8 * r:8 * (r + 1)],
                               np.asarray(penultimate_features(model, variables, images)),
                               rtol=1e-5, atol=1e-5)

  def kept(key):
    return np.load(os.path.join(workdir, "subsets", key, "prune_50", "seed_0", "kept_ids.npy"))

  expected, _ = moderate_reference(features, dataset.train_labels, keep)
  np.testing.assert_array_equal(kept("moderate"), expected)
  el2n = np.load(os.path.join(workdir, "scores", "el2n", f"step_{SCORE_STEP}.npy"))
  expected = d2_reference(features, el2n, keep, D2["d2_neighbors"], D2["d2_gamma_forward"],
                          D2["d2_gamma_reverse"])
  np.testing.assert_array_equal(kept("el2n-d2"), expected)
  assert not np.array_equal(kept("moderate"), kept("el2n-d2"))
  for row in out["rows"]:
    assert row["num_kept"] == keep and row["outcome"] in ("ok", "failed")

  # A rerun trains nothing and reads the cached features.
  again = run_figure1(workdir, dataset, model, optimizer, train, config, _seeds,
                      progress=False)
  assert again["trainings_run"] == 0
  assert [r["test_accuracy"] for r in again["rows"]] == [r["test_accuracy"] for r in out["rows"]]


@pytest.mark.parametrize("methods,changes,match", [
    (("unknown_method",), {}, "unknown score"),
    (("el2n:moderate",), {}, "write 'moderate'"),
    (("el2n:d3",), {}, "unknown strategy 'd3'"),
    (("d2",), {"d2_neighbors": 0}, "k >= 1"),
    (("d2",), {"d2_gamma_forward": 0.0}, "gamma_forward must be a finite number > 0"),
    (("d2",), {"d2_gamma_reverse": -0.5}, "gamma_reverse must be a finite number > 0"),
    (("d2",), {"score_names": ("grand",)}, r"methods use scores \['el2n'\]"),
])
def test_bad_geometric_methods_are_clear_errors(methods, changes, match):
  with pytest.raises(ValueError, match=match):
    _config(methods, **changes)
