"""Reruns that cannot mix runs: score files record (and are recomputed for) the runs and
seeds they came from; GraNd at init and GraNd at step 0 of trained runs are two files;
a diverged `--mode=train` exits 3 and names the run. The CLI runs in-process."""

import json

import numpy as np
import pytest

from datadiet_jax import artifacts
from datadiet_jax.scores import load_scores, save_scores
from datadiet_jax.scores.io import GRAND_INIT
from test_bad_input import BASE, run_cli, snapshot


def _sidecar(workdir, score, step):
  return json.loads((workdir / "scores" / score / f"step_{step}.json").read_text())


def test_more_runs_than_a_score_file_holds_recomputes_it(tmp_path):
  workdir = tmp_path / "work"
  args = [*BASE, f"--workdir={workdir}", "--mode=train_score", "--scores=el2n"]
  assert run_cli([*args, "--num_runs=2"]) == 0
  two = np.load(workdir / "scores" / "el2n" / "step_2.runs.npy")
  assert _sidecar(workdir, "el2n", 2)["seeds"] == [[42, 4242], [424284, 428484]]
  assert run_cli([*args, "--num_runs=3"]) == 0  # trains run 2, rescores over 3 runs
  record = _sidecar(workdir, "el2n", 2)
  assert record["num_runs"] == 3 and len(record["seeds"]) == 3
  assert record["run_dirs"] == ["runs/run_0", "runs/run_1", "runs/run_2"]
  three = np.load(workdir / "scores" / "el2n" / "step_2.runs.npy")
  np.testing.assert_array_equal(three[:2], two)  # the same checkpoints, scored again
  np.testing.assert_allclose(np.load(workdir / "scores" / "el2n" / "step_2.npy"),
                             three.mean(axis=0), rtol=1e-6)
  # Asking for 3 again keeps the file (same sources): not rewritten.
  before = (workdir / "scores" / "el2n" / "step_2.json").read_bytes()
  assert run_cli([*args, "--num_runs=3"]) == 0
  assert (workdir / "scores" / "el2n" / "step_2.json").read_bytes() == before


def test_grand_at_step_0_and_grand_at_init_are_two_files(tmp_path):
  workdir = tmp_path / "work"
  assert run_cli([*BASE, f"--workdir={workdir}", "--mode=train_score", "--scores=grand",
                  "--score_step=0", "--grand_init_runs=2"]) == 0
  at_step_0, at_init = _sidecar(workdir, "grand", 0), _sidecar(workdir, GRAND_INIT, 0)
  assert at_step_0["seeds"] == [[42, 4242]] and at_step_0["run_dirs"] == ["runs/run_0"]
  assert at_init["seeds"] == [[42, None], [424284, None]]
  assert "initialisation" in at_init["note"]
  # Step 0 of the run with model seed 42 is the init with seed 42: the same GraNd.
  run0 = np.load(workdir / "scores" / "grand" / "step_0.runs.npy")[0]
  init0 = np.load(workdir / "scores" / GRAND_INIT / "step_0.runs.npy")[0]
  np.testing.assert_allclose(run0, init0, rtol=1e-5, atol=1e-7)
  assert not np.allclose(np.load(workdir / "scores" / GRAND_INIT / "step_0.runs.npy")[1], run0)


def test_grand_init_written_as_grand_at_0_before_is_still_read(tmp_path):
  legacy = np.arange(4, dtype=np.float32)
  save_scores(str(tmp_path), "grand", 0, legacy,
              provenance={"note": "GraNd at initialisation: fresh inits, one per model seed"})
  np.testing.assert_array_equal(load_scores(str(tmp_path), GRAND_INIT, 0, 4), legacy)
  # grand@0 of trained runs is not mistaken for GraNd at init.
  other = tmp_path / "other"
  save_scores(str(other), "grand", 0, legacy, provenance={"runs": [0]})
  with pytest.raises(ValueError, match="no 'grand_init' scores for step 0"):
    load_scores(str(other), GRAND_INIT, 0, 4)


def test_diverged_train_mode_exits_3_naming_the_run(tmp_path, capsys):
  workdir = tmp_path / "work"
  code = run_cli([*BASE, f"--workdir={workdir}", "--mode=train", "--lr=1e6",
                  "--num_steps=10"])
  err = capsys.readouterr().err
  assert code == 3, err[-3000:]
  summary = artifacts.read_json(workdir / "runs" / "run_0" / "summary.json")
  assert summary["outcome"] == "diverged" and 1 <= summary["diverged_step"] <= 10
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, err[-3000:]
  assert "1 of 1 runs diverged" in lines[0] and "run_0" in lines[0]
  assert f"at step {summary['diverged_step']}" in lines[0] and "--lr" in lines[0]
  # The rerun reports the recorded divergence again (exit 3), training nothing.
  before = (workdir / "runs" / "run_0" / "summary.json").read_bytes()
  assert run_cli([*BASE, f"--workdir={workdir}", "--mode=train", "--lr=1e6",
                  "--num_steps=10"]) == 3
  assert "already ended, diverged" in capsys.readouterr().err
  assert (workdir / "runs" / "run_0" / "summary.json").read_bytes() == before
  # Scoring the diverged run is refused before anything is written.
  files = snapshot(workdir)
  assert run_cli([*BASE, f"--workdir={workdir}", "--mode=score", "--scores=el2n",
                  "--lr=1e6", "--num_steps=10"]) == 2
  line = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
  assert len(line) == 1 and f"diverged at step {summary['diverged_step']}" in line[0]
  assert snapshot(workdir) == files
