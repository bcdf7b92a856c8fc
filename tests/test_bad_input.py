"""Bad input to the CLI (`python -m experiments.cifar`): one `error:` line naming the
problem and the fix, exit status 2 (flag-parsing errors included), and nothing written: a
new --workdir is not created, an existing one stays byte-identical (flags.txt,
run_info.json, train.log, config.json, runs), and no training starts.

The CLI runs in-process (absl flags reset between cases): a subprocess per case would
spend ~5 s importing JAX. BUILD_NOTES.md lists these cases with their messages (a test
checks that it lists every case); to regenerate its table, run this file with
DATADIET_BAD_INPUT_TABLE=<file>: each passing case appends its row to <file>.
"""

import os

import numpy as np
import pytest
from absl import flags

from experiments import cifar, common
from conftest import snapshot_files as snapshot

FLAGS = flags.FLAGS
BASE = ["--dataset=digits", "--num_steps=2", "--batch_size=32", "--model=small_cnn",
        "--num_filters=2", "--noaugment", "--notrack_forgetting", "--noprogress",
        "--eval_every_steps=-1", "--save_steps=-1"]
FIGURE1 = ["--mode=figure1", "--score_step=2", "--methods=random,el2n:hardest",
           "--figure1_scores=el2n", "--score_runs=1"]

# id: (arguments, workdir: "new" | "existing" | "file" | "below_file" | "bad_scores" |
#      "proc" | None, exit status, strings the error line must contain)
CASES = {
    "train_score_unknown_score": (["--mode=train_score", "--scores=el2n,grnd"], "new", 2,
                                  ["unknown score 'grnd'", "choose one of", "el2n"]),
    "score_unknown_score": (["--mode=score", "--scores=el2m"], "existing", 2,
                            ["unknown score 'el2m'"]),
    "score_empty_scores": (["--mode=score", "--scores="], "existing", 2,
                           ["scores nothing", "--scores=el2n,grand"]),
    "figure1_unknown_strategy": ([*FIGURE1, "--methods=random,el2n:hardst"], "existing", 2,
                                 ["unknown strategy 'hardst'", "hardest, easiest"]),
    "figure1_unknown_method_score": ([*FIGURE1, "--methods=el2x:hardest"], "existing", 2,
                                     ["unknown score 'el2x'"]),
    "figure1_prune_fraction_1": ([*FIGURE1, "--prune_fractions=1.0"], "existing", 2,
                                 ["prune fraction 1.0 must lie in (0, 1)", "--prune_fractions"]),
    "figure1_prune_fraction_0": ([*FIGURE1, "--prune_fractions=0.5,0"], "new", 2,
                                 ["prune fraction 0.0 must lie in (0, 1)", "--prune_fractions"]),
    "figure1_prune_fraction_text": ([*FIGURE1, "--prune_fractions=half"], "new", 2,
                                    ["--prune_fractions must be numbers", "half"]),
    "figure1_no_score_step": (["--mode=figure1"], "existing", 2,
                              ["--score_step is required for --mode=figure1"]),
    "figure1_method_score_not_computed": ([*FIGURE1, "--methods=forgetting:hardest"],
                                          "existing", 2,
                                          ["['forgetting']", "not in --figure1_scores"]),
    "figure1_d2_gamma_zero": ([*FIGURE1, "--methods=random,d2", "--d2_gamma_reverse=0"],
                              "new", 2, ["gamma_reverse must be a finite number > 0",
                                         "--d2_gamma_reverse"]),
    "figure1_d2_no_neighbors": ([*FIGURE1, "--methods=d2", "--d2_neighbors=0"], "new", 2,
                                ["k >= 1", "--d2_neighbors"]),
    "figure1_moderate_with_score": ([*FIGURE1, "--methods=el2n:moderate"], "new", 2,
                                    ["not by a score", "write 'moderate'"]),
    "figure1_unknown_figure1_score": ([*FIGURE1, "--figure1_scores=el2n,grnad"], "new", 2,
                                      ["unknown score 'grnad'"]),
    "figure1_score_train_steps_short": ([*FIGURE1, "--score_step=4", "--score_train_steps=2"],
                                        "new", 2, ["score runs train 2 steps", "step 4"]),
    "figure1_report_only_no_scores": ([*FIGURE1, "--figure1_report_only"], "existing", 2,
                                      ["no 'el2n' scores for step 2", "available steps: none"]),
    "figure1_score_file_of_another_dataset": (FIGURE1, "bad_scores", 2,
                                              ["has 5 scores but the dataset has 1442",
                                               "another dataset or subset",
                                               "remove it to recompute"]),
    "score_step_not_saved": (["--mode=score", "--scores=el2n", "--score_step=1"], "existing",
                             2, ["--score_step=1: no checkpoint for step 1",
                                 "available: [0, 2]", "--save_steps"]),
    "score_untrained_runs": (["--mode=score", "--scores=el2n", "--num_runs=2"], "existing",
                             2, ["run 1 was never trained", "--mode=train_score"]),
    "score_step_past_the_end": (["--mode=train_score", "--scores=el2n", "--score_step=9"],
                                "new", 2, ["no checkpoint for step 9", "available: [0, 2]"]),
    "no_workdir": (["--mode=train"], None, 2, ["--workdir is required"]),
    "workdir_is_a_file": (["--mode=train"], "file", 2, ["is a file, not a folder"]),
    "workdir_below_a_file": (["--mode=train"], "below_file", 2, ["which is a file"]),
    "workdir_cannot_be_created": (["--mode=train"], "proc", 2,
                                  ["No such file or directory", "/proc/", "file-system"]),
    "other_lr": (["--mode=train", "--lr=0.2"], "existing", 2,
                 ["other settings (optimizer differ)", "--workdir"]),
    "other_data_seed": (["--mode=train", "--data_seed=1"], "existing", 2,
                        ["other settings (data_seed differ)"]),
    "other_model_seed": (["--mode=train", "--model_seed=7"], "existing", 2,
                         ["other settings (model_seed differ)"]),
    "other_seed_stride": (["--mode=train", "--seed_stride=5"], "existing", 2,
                          ["other settings (seed_stride differ)"]),
    "other_label_noise": ([*FIGURE1, "--label_noise_fraction=0.1"], "existing", 2,
                          ["other settings (label_noise differ)"]),
    "other_data_subset": (["--mode=train", "--train_per_class=50"], "existing", 2,
                          ["example_order, num_train differ"]),
    "flag_unknown_enum_value": (["--mode=train", "--dataset=no_such_data"], "new", 2,
                                ["--dataset=no_such_data", "should be one of", "digits"]),
    "flag_below_lower_bound": (["--mode=train", "--batch_size=0"], "new", 2,
                               ["--batch_size=0", "not a positive integer"]),
    "flag_not_an_integer": (["--mode=train", "--num_steps=abc"], "new", 2,
                            ["--num_steps=abc", "invalid literal for int()"]),
    "flag_unknown": (["--mode=train", "--no_such_flag=1"], "new", 2,
                     ["Unknown command line flag 'no_such_flag'"]),
    "flag_unknown_mode": (["--mode=trian"], "new", 2, ["--mode=trian", "should be one of"]),
    "flagfile_missing": (["--flagfile=/nonexistent/x.flags"], "new", 2,
                         ["/nonexistent/x.flags"]),
    "positional_argument": (["--mode=train", "extra"], "new", 2,
                            ["unexpected arguments: extra", "--flag=value"]),
    "decay_epochs_not_integers": (["--mode=train", "--decay_epochs=a,b"], "new", 2,
                                  ["--decay_epochs must be integers"]),
    "batch_larger_than_dataset": (["--mode=train", "--batch_size=5000"], "new", 2,
                                  ["--batch_size=5000", "1442 training examples"]),
    "pool_selection_missing_flags": (["--mode=pool_selection"], "new", 2,
                                     ["needs --pool_base_per_class, --pool_size, --pool_k"]),
    "worker_index_out_of_range": (["--mode=figure1", "--num_workers=2", "--worker_index=2"],
                                  "new", 2, ["--worker_index=2 must lie in [0, --num_workers=2)"]),
    "num_workers_zero": (["--mode=train", "--num_workers=0"], "new", 2, ["--num_workers"]),
    "merge_scores_without_shards": (["--mode=merge_scores", "--scores=el2n", "--score_step=2"],
                                    "existing", 2, ["no shards of el2n@2",
                                                    "--num_workers/--worker_index"]),
    "score_corrupt_checkpoint": (["--mode=score", "--scores=el2n"], "corrupt_checkpoint", 2,
                                 ["checkpoint for step 2", "is corrupt"]),
    # --dataset=records on a damaged copy of a converted digits folder ({records}), and
    # --example_ids_file ({ids}) naming ids outside the data set.
    "records_missing_shard": (["--mode=train", "--dataset=records", "--data_dir={records}"],
                              "records_missing", 2,
                              ["train-00001-of-00003.array_record: shard missing",
                               "--mode=convert"]),
    "records_truncated_shard": (["--mode=train", "--dataset=records", "--data_dir={records}"],
                                "records_truncated", 2,
                                ["train-00000-of-00003.array_record", "truncated or replaced",
                                 "--mode=convert"]),
    "records_foreign_shard": (["--mode=train", "--dataset=records", "--data_dir={records}"],
                              "records_foreign", 2,
                              ["train-00000-of-00003.array_record: first record is example "
                               "500, the manifest says 0", "a foreign shard", "--mode=convert"]),
    "records_not_an_array_record": (["--mode=train", "--dataset=records",
                                     "--data_dir={records}"], "records_garbage", 2,
                                    ["train-00002-of-00003.array_record: not a readable "
                                     "ArrayRecord file", "--mode=convert"]),
    "records_manifest_mismatch": (["--mode=train", "--dataset=records", "--data_dir={records}"],
                                  "records_other_manifest", 2,
                                  ["train-00001-of-00003.array_record: first record is "
                                   "example 500, the manifest says 1000",
                                   "a foreign shard"]),
    "train_score_dynamics_untracked": (["--mode=train_score", "--scores=el2n,aum"], "new", 2,
                                       ["--scores names aum, accumulated while the runs "
                                        "train", "add --track_dynamics=aum"]),
    "figure1_dynamics_score_untracked": ([*FIGURE1, "--figure1_scores=el2n,dual",
                                          "--methods=random,dual:hardest"], "existing", 2,
                                         ["--figure1_scores names dual",
                                          "add --track_dynamics=dual"]),
    "figure1_subset_smaller_than_a_batch": ([*FIGURE1, "--prune_fractions=0.5,0.99"],
                                            "existing", 2,
                                            ["--prune_fractions=0.99 keeps 15 of 1442",
                                             "fewer than --batch_size=32"]),
    "distributed_score_with_num_workers": (["--mode=score", "--scores=el2n", "--distributed",
                                            "--num_workers=2"], "existing", 2,
                                           ["--num_workers=2 with --distributed --mode=score",
                                            "drop --num_workers"]),
    "records_sha256_mismatch": (["--mode=train", "--dataset=records", "--data_dir={records}",
                                 "--verify_records"], "records_flipped", 2,
                                ["train-00001-of-00003.array_record: sha256 differs from the "
                                 "manifest's", "--mode=convert"]),
    "records_train_per_class": (["--mode=train", "--dataset=records", "--data_dir={records}",
                                 "--train_per_class=10"], "records_intact", 2,
                                ["--train_per_class with --dataset=records", "--mode=convert",
                                 "--example_ids_file"]),
    "example_ids_outside_the_data_set": (["--mode=train", "--example_ids_file={ids}"],
                                         "ids_outside", 2,
                                         ["--example_ids_file", "2 ids outside the data set's "
                                          "[0, 1442) (first 1442)", "written for this data set"]),
    "example_ids_outside_records": (["--mode=train", "--dataset=records", "--data_dir={records}",
                                     "--example_ids_file={ids}"], "records_ids_outside", 2,
                                    ["2 ids outside the data set's [0, 1442)"]),
    "example_ids_repeated": (["--mode=train", "--example_ids_file={ids}"], "ids_repeated", 2,
                             ["1 repeated ids"]),
    "example_ids_file_in_figure1": ([*FIGURE1, "--example_ids_file={ids}"], "ids_repeated", 2,
                                    ["--example_ids_file trains a subset in --mode=train"]),
    "missing_data_dir": (["--mode=train", "--dataset=image_folder",
                          "--data_dir=/nonexistent"], "new", 2,
                         ["/nonexistent not found", "--data_dir"]),
}


def run_cli(args):
  """Runs the CLI in this process as `python -m experiments.cifar *args` would; returns
  its exit status (0 if it returned)."""
  FLAGS.unparse_flags()
  try:
    cifar.main(cifar.parse_flags(["experiments.cifar", *args]))
  except SystemExit as exit_:
    return exit_.code
  finally:
    common.setup_logging()  # detach the workdir's train.log handler, if any
  return 0


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
  """A workdir trained once (2 steps) by --mode=train: flags.txt, run_info.json,
  train.log, config.json, runs/run_0."""
  workdir = tmp_path_factory.mktemp("bad_input") / "existing"
  assert run_cli([*BASE, "--mode=train", f"--workdir={workdir}"]) == 0
  files = snapshot(workdir)
  assert {"flags.txt", "run_info.json", "train.log", "config.json",
          "runs/run_0/summary.json"} <= set(files)
  return workdir


def _workdir(kind, tmp_path, existing, request=None):
  if kind is None:
    return None
  if kind == "existing":
    return existing
  if kind == "new":
    return tmp_path / "new" / "work"
  if kind == "file":
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file"
  if kind == "below_file":
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "work"
  if kind == "bad_scores":  # a workdir holding an EL2N file of 5 examples
    (tmp_path / "bad" / "scores" / "el2n").mkdir(parents=True)
    np.save(tmp_path / "bad" / "scores" / "el2n" / "step_2.npy", np.ones(5, np.float32))
    return tmp_path / "bad"
  if kind == "corrupt_checkpoint":  # a copy of the trained workdir, step 2's arrays garbled
    import glob
    import shutil
    shutil.copytree(existing, tmp_path / "corrupt")
    files = [p for p in glob.glob(str(tmp_path / "corrupt" / "runs" / "run_0" / "**" / "2" /
                                      "state" / "**"), recursive=True) if os.path.isfile(p)]
    assert files
    for p in files:
      with open(p, "r+b") as f:
        f.write(b"\0" * os.path.getsize(p))
    return tmp_path / "corrupt"
  if kind.startswith(("records_", "ids_")):
    _broken_inputs(kind, tmp_path, request)
    return tmp_path / "new" / "work"
  if kind == "proc":
    return "/proc/datadiet_no_such_folder/work"
  return None


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
  """A records folder of digits (3 train shards of 500 examples)."""
  pytest.importorskip("array_record")
  from datadiet_jax.data import embedded, records
  out = str(tmp_path_factory.mktemp("bad_input_records") / "digits")
  records.convert_dataset(embedded.load_digits(), out, shard_size=500, progress=False)
  return out


def _broken_inputs(kind, tmp_path, request):
  """tmp_path/records: a damaged copy of the digits records (kinds records_*), and
  tmp_path/ids.npy: an id file (kinds *ids_*)."""
  import shutil
  if kind.startswith("records_"):
    shutil.copytree(request.getfixturevalue("records_dir"), tmp_path / "records")
  shard = lambda i: tmp_path / "records" / f"train-{i:05d}-of-00003.array_record"
  if kind == "records_missing":
    os.remove(shard(1))
  elif kind == "records_truncated":
    shard(0).write_bytes(shard(0).read_bytes()[:-100])
  elif kind == "records_foreign":  # shard 1 (500 examples, same size) in shard 0's place
    shutil.copy(shard(1), shard(0))
  elif kind == "records_garbage":  # same size, not an ArrayRecord file
    shard(2).write_bytes(np.random.default_rng(0).bytes(os.path.getsize(shard(2))))
  elif kind == "records_flipped":  # one byte of shard 1 changed where no reader looks (block
    data = bytearray(shard(1).read_bytes())  # padding): only --verify_records' sha256 sees it
    data[int(len(data) * 0.7)] ^= 0xFF
    shard(1).write_bytes(bytes(data))
  elif kind == "records_other_manifest":  # the manifest of a conversion with 1000-example
    import json  # shards: shard 1 is said to start at id 1000
    manifest = json.loads((tmp_path / "records" / "records.json").read_text())
    manifest["splits"]["train"]["shards"][1]["first_id"] = 1000
    (tmp_path / "records" / "records.json").write_text(json.dumps(manifest))
  if kind in ("ids_outside", "records_ids_outside"):
    np.save(tmp_path / "ids.npy", np.array([0, 7, 1442, 5000], np.int32))
  elif kind == "ids_repeated":
    np.save(tmp_path / "ids.npy", np.array([3, 1, 3], np.int64))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, existing, capsys,
                                                         request):
  args, kind, status, needles = CASES[name]
  workdir = _workdir(kind, tmp_path, existing, request)
  before_existing = snapshot(existing)
  before_tmp = snapshot(tmp_path)
  workdir_args = [] if workdir is None else [f"--workdir={workdir}"]
  args = [a.format(records=tmp_path / "records", ids=tmp_path / "ids.npy") for a in args]
  code = run_cli([*BASE, *workdir_args, *args])
  err = capsys.readouterr().err
  assert code == status, f"{name}: exit {code}\n{err[-3000:]}"
  assert "Traceback" not in err, err[-3000:]
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, f"{name}: expected one error line:\n{err[-3000:]}"
  for needle in needles:
    assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"
  # Nothing written: the existing workdir byte-identical, no new folder or file anywhere.
  assert snapshot(existing) == before_existing, f"{name}: modified the existing workdir"
  assert snapshot(tmp_path) == before_tmp, f"{name}: wrote into {tmp_path}"
  assert not (tmp_path / "new").exists(), f"{name}: created the workdir"
  if os.environ.get("DATADIET_BAD_INPUT_TABLE"):
    _append_table_row(os.environ["DATADIET_BAD_INPUT_TABLE"], name, args, kind, code,
                      lines[0], [tmp_path, existing.parent])


def _append_table_row(path, name, args, kind, code, line, tmp_dirs):
  """One BUILD_NOTES row: | `name` | `args` (workdir kind) | exit | `message` |, the
  test's temporary folder written <tmp>, `F1` for the figure-1 arguments."""
  shown = " ".join(args)
  figure1 = " ".join(FIGURE1)
  shown = ("F1" + shown[len(figure1):]) if shown.startswith(figure1) else shown
  for tmp in tmp_dirs:
    shown, line = shown.replace(str(tmp), "<tmp>"), line.replace(str(tmp), "<tmp>")
  line = line.replace("|", "\\|")
  workdir = "no workdir" if kind is None else f"{kind} workdir"
  with open(path, "a") as f:
    f.write(f"| `{name}` | `{shown}` ({workdir}) | {code} | `{line}` |\n")


def test_build_notes_lists_every_case():
  """BUILD_NOTES.md's table of bad inputs has a row for every case here, and no other."""
  notes = open(os.path.join(os.path.dirname(__file__), "..", "BUILD_NOTES.md")).read()
  section = notes.split("### Bad inputs the CLI is tested with", 1)[1].split("\n#", 1)[0]
  listed = {row.split("`")[1] for row in section.splitlines() if row.startswith("| `")}
  assert listed == set(CASES), (f"missing in BUILD_NOTES: {sorted(set(CASES) - listed)}; "
                                f"not a case: {sorted(listed - set(CASES))}")


def test_convert_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, existing, capsys):
  """--mode=convert into a non-empty folder (the existing workdir), or without --records_out."""
  pytest.importorskip("array_record")
  before_existing = snapshot(existing)
  for args, needle in (([f"--records_out={existing}"], f"--records_out {existing} is not empty"),
                       ([], "--mode=convert needs --records_out")):
    before_tmp = snapshot(tmp_path)
    code = run_cli([*BASE, "--mode=convert", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err[-3000:]
    assert snapshot(existing) == before_existing and snapshot(tmp_path) == before_tmp


def test_convert_killed_midway_restarts_cleanly(tmp_path, capsys):
  """What a conversion killed midway leaves (its `<out>.partial-<pid>` folder with a half
  shard, and the empty output folder made beforehand) does not stop the next conversion,
  which removes the stale folder and writes exactly what a clean conversion writes."""
  pytest.importorskip("array_record")
  import subprocess
  import sys
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()  # a pid no live process has (the killed conversion's)
  out, clean = tmp_path / "out", tmp_path / "clean"
  stale = tmp_path / f"out.partial-{dead.pid}"
  stale.mkdir()
  (stale / "train-00000-of-00003.array_record").write_bytes(b"\0" * 4096)
  out.mkdir()
  convert = [*BASE, "--mode=convert", "--records_shard_size=500"]
  assert run_cli([*convert, f"--records_out={out}"]) == 0, capsys.readouterr().err[-3000:]
  assert run_cli([*convert, f"--records_out={clean}"]) == 0
  assert not stale.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "out"]
  assert snapshot(out) == snapshot(clean)  # byte for byte
  assert sorted(snapshot(out)) == ["records.json", "test-00000-of-00001.array_record",
                                   "test_labels.npy", *[f"train-0000{i}-of-00003.array_record"
                                                        for i in range(3)], "train_labels.npy"]
  from datadiet_jax.data import records
  assert records.RecordSource(str(out), "train", verify_sha256=True)[1441]["ids"] == 1441
