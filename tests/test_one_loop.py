"""One loop for lone runs and ensembles (train/loop.py: run_loop; issue 21, item 2).

An ensemble member's checkpoint is a lone run's checkpoint: interrupted inside an ensemble
and resumed alone by `train_run`, the member ends where its uninterrupted lone run ends
(the tolerance of tests/test_ensemble.py), and its compute accounting counts every step
it took, the ensemble's included: optimizer_steps = num_steps and train_examples =
num_steps x batch size (hand-derived; the ensemble's checkpoints record no accounting, so
the resumed run takes the full-data counts of the step it resumes from).
"""

import json
import os

from datadiet_jax.models import get_model
from datadiet_jax.train.ensemble_loop import train_ensemble
from datadiet_jax.train.loop import run_paths, train_run
from test_ensemble import CONFIG, OPTIMIZER, SEEDS, assert_same_run, synthetic_dataset


def test_a_member_interrupted_in_an_ensemble_resumes_alone_to_its_lone_run(tmp_path):
  dataset = synthetic_dataset()
  model = get_model("small_cnn", 10, num_filters=4)
  dirs = [str(tmp_path / f"member_{m}") for m in range(len(SEEDS))]
  first = train_ensemble(dirs, model, dataset, OPTIMIZER, CONFIG, SEEDS, progress=False,
                         stop_after_step=3, strategy="map")
  assert [r.final_step for r in first] == [3, 3]
  assert sorted(os.listdir(run_paths(dirs[0])["checkpoints"])) == ["0", "2"]
  resumed = train_run(dirs[0], model, dataset, OPTIMIZER, CONFIG, *SEEDS[0], progress=False)
  assert (resumed.final_step, resumed.steps_trained) == (CONFIG.num_steps, 2)  # steps 3, 4
  alone = str(tmp_path / "alone")
  train_run(alone, model, dataset, OPTIMIZER, CONFIG, *SEEDS[0], progress=False)
  for step in (0, 2, 4):
    assert_same_run(dirs[0], alone, model, dataset, CONFIG, SEEDS[0], step)
  account = json.load(open(run_paths(dirs[0])["summary"]))["accounting"]
  assert account["optimizer_steps"] == CONFIG.num_steps == 4
  assert account["train_examples"] == CONFIG.num_steps * CONFIG.batch_size == 64
  assert account["scored_examples"] == 0
  reference = json.load(open(run_paths(alone)["summary"]))["accounting"]
  for key in ("optimizer_steps", "train_examples", "scored_examples"):
    assert account[key] == reference[key], key
