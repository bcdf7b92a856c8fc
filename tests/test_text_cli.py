"""`python -m experiments.text`: a Figure-1 sweep end to end on a slice of real SNIPS
(train, score, prune, retrain, report), and bad input: one clear line, exit 2, nothing
written."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NLP_TAR = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "nlp-text.tar.gz"))
TINY = ["--max_length=24", "--bert_layers=1", "--bert_hidden=16", "--bert_heads=2",
        "--bert_intermediate=32", "--batch_size=8", "--eval_batch_size=350", "--noprogress"]


def _run(args, env, **kwargs):
  return subprocess.run([sys.executable, "-m", "experiments.text", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900, **kwargs)


@pytest.mark.skipif(not os.path.exists(NLP_TAR), reason="shared nlp-text.tar.gz absent")
def test_text_figure1_end_to_end_on_snips(tmp_path, cli_env):
  workdir = tmp_path / "fig"
  result = _run(["--mode=figure1", f"--workdir={workdir}", f"--data_dir={NLP_TAR}",
                 "--text_subset=snips", "--train_per_class=6", *TINY, "--num_steps=6",
                 "--score_step=6", "--score_runs=1", "--eval_every_steps=-1", "--save_steps=-1",
                 "--figure1_scores=el2n,el2n_mean,grand_head,forgetting",
                 "--methods=random,el2n:hardest,grand_head:hardest", "--prune_fractions=0.5"],
                cli_env)
  assert result.returncode == 0, result.stderr[-3000:]
  n = 7 * 6  # 7 intents x 6 examples
  for score in ("el2n", "el2n_mean", "grand_head", "forgetting"):
    values = np.load(workdir / "scores" / score / "step_6.npy")
    assert values.shape == (n,), score
    assert not np.isnan(values).any(), score
  el2n, el2n_mean = (np.load(workdir / "scores" / s / "step_6.npy") for s in ("el2n", "el2n_mean"))
  assert (el2n > 0).all() and (el2n_mean > 0).all()
  with open(workdir / "results" / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len({r["method"] for r in rows}) == 4  # full data, random, EL2N, GraNd-head
  assert (workdir / "results" / "accuracy_vs_pruned.png").stat().st_size > 1000
  metrics = (workdir / "score_runs" / "runs" / "run_0" / "metrics.csv").read_text().splitlines()
  assert metrics[0].endswith("test_slot_f1") and len(metrics) == 3


def _joint(folder, **overrides):
  files = {"train/seq.in": "play jazz now\nbook a table for two\n",
           "train/seq.out": "O B-genre O\nO O O O B-party\n",
           "train/label": "PlayMusic\nBookRestaurant\n",
           "test/seq.in": "play blues\n", "test/seq.out": "O B-genre\n",
           "test/label": "PlayMusic\n"}
  files.update(overrides)
  for rel, content in files.items():
    if content is None:
      continue
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
  return str(folder)


def test_text_bad_inputs_fail_with_one_clear_line_and_write_nothing(tmp_path, cli_env):
  bad_ckpt = tmp_path / "ckpt"
  bad_ckpt.mkdir()
  (bad_ckpt / "config.json").write_text('{"hidden_size": 8, "num_attention_heads": 2}')
  (bad_ckpt / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
  good = _joint(tmp_path / "good")
  cases = {
      "missing_split_file": (_joint(tmp_path / "a", **{"test/seq.out": None}),
                             [], ["error:", "missing file test/seq.out"]),
      "length_mismatch": (_joint(tmp_path / "b", **{"train/seq.out": "O B-genre O\nO O O\n"}),
                          [], ["error:", "train/seq.out line 2 has 3 tags for 5 words"]),
      "empty_file": (_joint(tmp_path / "c", **{"train/label": ""}), [],
                     ["error:", "train/label", "is empty"]),
      "unknown_label_file": (_joint(tmp_path / "d", **{"intent_label.txt": "UNK\nPlayMusic\n"}),
                             [], ["error:", "does not list the train labels BookRestaurant"]),
      "no_pretrained_dir": (good, ["--pretrained_dir=/nonexistent/bert"],
                            ["error:", "/nonexistent/bert", "not a directory"]),
      "pretrained_without_weights": (good, [f"--pretrained_dir={bad_ckpt}"],
                                     ["error:", "has no model.safetensors"]),
      "image_model_on_text": (good, ["--model=small_cnn"], ["error:", "--model bert"]),
  }
  procs = {}
  for name, (data, extra, _) in cases.items():
    workdir = tmp_path / f"work_{name}"
    procs[name] = (workdir, subprocess.Popen(
        [sys.executable, "-m", "experiments.text", "--mode=train", f"--workdir={workdir}",
         f"--data_dir={data}", "--num_steps=2", "--batch_size=2", *TINY[:-2], *extra],
        cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for name, (workdir, proc) in procs.items():
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{stderr[-2000:]}"
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"{name}: {stderr[-2000:]}"
    for needle in cases[name][2]:
      assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"
    assert not workdir.exists() or not any(workdir.iterdir()), f"{name}: wrote {workdir}"
