"""The notebooks in experiments/notebooks/: every .ipynb (what Colab opens) has a jupytext
percent-format .py twin with the same cells, and every notebook runs top to bottom on CPU
at its smoke size (DATADIET_NOTEBOOK_SMOKE=1) and produces what it promises."""

import csv
import json
import os
import sys

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "experiments", "notebooks")
NAMES = sorted(os.path.splitext(n)[0] for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
CIFAR_NOTEBOOKS = {"grand_at_init_vs_input_norm", "cifar10_tpu"}


def _cells(notebook) -> list[tuple[str, str]]:
  return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_notebook_has_an_in_sync_py_twin():
  twins = sorted(os.path.splitext(n)[0] for n in os.listdir(NOTEBOOKS) if n.endswith(".py"))
  assert NAMES and twins == NAMES, (twins, NAMES)
  for name in NAMES:
    ipynb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    twin = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
    assert _cells(ipynb) == _cells(twin), (
        f"{name}.ipynb and {name}.py differ; edit one and run `jupytext --sync "
        f"experiments/notebooks/{name}.py`")
    assert ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    nbformat.validate(ipynb)


def test_notebooks_use_the_python_api_not_the_cli():
  for name in NAMES:
    notebook = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    for cli in ("experiments.cifar", "--flagfile", "!python"):
      assert cli not in code, f"{name}: a code cell calls the CLI ({cli})"
    cli_imports = [line for line in code.splitlines()
                   if line.lstrip().startswith(("from experiments", "import experiments"))]
    assert not cli_imports, f"{name}: imports the CLI folder, not datadiet_jax: {cli_imports}"
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: needs exactly one cell tagged 'parameters'"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
  """A kernel spec that runs this interpreter (a bare 'python3' spec may find another)."""
  folder = tmp_path_factory.mktemp("jupyter") / "kernels" / "datadiet_test"
  folder.mkdir(parents=True)
  (folder / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "datadiet_jax test", "language": "python"}))
  previous = os.environ.get("JUPYTER_PATH")
  os.environ["JUPYTER_PATH"] = str(folder.parent.parent)
  yield "datadiet_test"
  if previous is None:
    del os.environ["JUPYTER_PATH"]
  else:
    os.environ["JUPYTER_PATH"] = previous


def _execute(name, workdir, kernel_name, monkeypatch, cli_env, extra_env=()):
  for key in ("JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR",
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "DATADIET_CACHE"):
    monkeypatch.setenv(key, cli_env[key])
  monkeypatch.setenv("DATADIET_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("TQDM_MININTERVAL", "5")
  for key, value in extra_env:
    monkeypatch.setenv(key, value)
  notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
  client = nbclient.NotebookClient(notebook, kernel_name=kernel_name, timeout=600,
                                   resources={"metadata": {"path": str(workdir)}})
  client.execute()
  return notebook


def _outputs(notebook, kind: str) -> list:
  return [o for cell in notebook.cells if cell.cell_type == "code"
          for o in cell.get("outputs", []) if kind in o.get("data", {})]


def _read_csv(path) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


def test_quickstart_runs_and_shows_the_table_and_plots(tmp_path, kernel_name, monkeypatch,
                                                       cli_env):
  notebook = _execute("quickstart", tmp_path, kernel_name, monkeypatch, cli_env)
  results = tmp_path / "workdirs" / "notebook_quickstart_smoke" / "results"
  rows = _read_csv(results / "results.csv")
  # A run whose final test loss is at chance level is "failed" and not averaged (NaN mean);
  # 2 smoke epochs on a pruned subset can end there.
  table = {(r["method"], float(r["prune_fraction"])): float(r["test_accuracy_mean"])
           for r in rows if r["num_ok"] == "1"}
  assert sorted((r["method"], float(r["prune_fraction"])) for r in rows) == sorted([
      ("full data", 0.0), ("random", 0.5), ("EL2N@20, keep hardest", 0.5),
      ("GraNd@init, keep hardest", 0.5)])
  # The smoke size: full data, and 3 methods at 50 % pruned, one seed each.
  assert all(0.0 <= acc <= 1.0 for acc in table.values())
  # Even 2 epochs of a 4-filter CNN beat chance (10 %) on digits by far.
  assert table[("full data", 0.0)] > 0.3
  assert len(_outputs(notebook, "image/png")) >= 2  # the accuracy plot and the heatmap
  assert any("| method |" in o["data"]["text/markdown"]
             for o in _outputs(notebook, "text/markdown"))


def _ranks(x):
  """Ranks 0..N-1 by brute force (the scores have no ties at float32)."""
  import numpy as np
  ranks = np.empty(len(x))
  ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
  return ranks


def _spearman(a, b) -> float:
  import numpy as np
  return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def test_grand_at_init_notebook_finds_grand_at_init_tracks_the_input_norm(
    tmp_path, kernel_name, monkeypatch, cli_env, real_cifar_tar, shared_cifar_cache):
  import numpy as np
  from datadiet_jax.data import load_dataset
  notebook = _execute("grand_at_init_vs_input_norm", tmp_path, kernel_name, monkeypatch,
                      cli_env, [("DATADIET_CIFAR_DATA", real_cifar_tar),
                                ("DATADIET_CACHE", shared_cifar_cache)])
  workdir = tmp_path / "workdirs" / "notebook_grand_init_smoke"
  summary = json.loads((workdir / "results" / "grand_init_vs_input_norm.json").read_text())
  # The smoke size: 40 images per class, 3 inits.
  dataset = load_dataset("image_folder", data_dir=real_cifar_tar, cache_dir=shared_cifar_cache,
                         sort_by_class=True, train_per_class=40, subset_seed=0)
  assert summary["num_train"] == dataset.num_train == 400
  per_init = np.load(workdir / "scores" / "grand_init" / "step_0.runs.npy")
  assert per_init.shape == (3, 400)
  # Input norm recomputed here from the pixels, and every Spearman from brute-force ranks.
  x = (dataset.train_images.astype(np.float64) - dataset.mean) / dataset.std
  norm = np.sqrt((x.reshape(400, -1) ** 2).sum(1))
  np.testing.assert_allclose(np.load(workdir / "scores" / "input_norm" / "step_0.npy"), norm,
                             rtol=1e-5)
  rho_mean = _spearman(per_init.mean(0), norm)
  rho_single = [_spearman(g, norm) for g in per_init]
  assert summary["spearman_mean_vs_input_norm"] == pytest.approx(rho_mean, abs=1e-6)
  np.testing.assert_allclose(summary["spearman_single_init_vs_input_norm"], rho_single,
                             atol=1e-6)
  # The finding, on real CIFAR-10 images even at 400 examples and 3 inits (measured 0.863;
  # 0.952 with 8 inits on 10,000 images): GraNd at init ranks like the input norm, and the
  # mean over inits more so than any single init.
  assert rho_mean > 0.75, rho_mean
  assert rho_mean > max(rho_single), (rho_mean, rho_single)
  # The pruning comparison ran: full data + 3 methods at 50 % pruned.
  rows = _read_csv(workdir / "results" / "runs.csv")
  assert sorted((r["key"], r["prune_fraction"]) for r in rows) == sorted([
      ("full", "0.0"), ("random", "0.5"), ("grand_init-hardest", "0.5"),
      ("input_norm-hardest", "0.5")])
  overlap = summary["kept_overlap_grand_init_vs_input_norm"]["0.5"]
  kept = [np.load(workdir / "subsets" / key / "prune_50" / "seed_0" / "kept_ids.npy")
          for key in ("grand_init-hardest", "input_norm-hardest")]
  assert overlap == pytest.approx(len(np.intersect1d(*kept)) / 200)
  assert overlap > 0.6  # both keep mostly the same high-norm images (measured 0.83)
  assert len(_outputs(notebook, "image/png")) == 2


def test_cifar10_tpu_notebook_runs_data_parallel_on_two_devices(
    tmp_path, kernel_name, monkeypatch, cli_env, real_cifar_tar, shared_cifar_cache):
  import numpy as np
  # 2 CPU devices; on starved cores (8 jobs on 2 cores) one device thread once missed
  # XLA's 40 s collective rendezvous and the kernel aborted: allow it 10 minutes.
  flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
           " --xla_cpu_collective_call_terminate_timeout_seconds=600"
           " --xla_cpu_collective_call_warn_stuck_timeout_seconds=120")
  notebook = _execute("cifar10_tpu", tmp_path, kernel_name, monkeypatch, cli_env,
                      [("DATADIET_CIFAR_DATA", real_cifar_tar),
                       ("DATADIET_CACHE", shared_cifar_cache), ("XLA_FLAGS", flags.strip())])
  workdir = tmp_path / "workdirs" / "notebook_cifar10_tpu_smoke"
  summary = json.loads((workdir / "results" / "notebook_summary.json").read_text())
  assert len(summary["devices"]) == 2 and summary["data_source"] == "image_folder"
  assert summary["num_train"] == 160 and summary["score_step"] == 5
  # Score runs: 2 runs, EL2N/GraNd at the score step over both, GraNd at init over 2 inits.
  for score, step, members in (("el2n", 5, 2), ("grand", 5, 2), ("grand_init", 0, 2)):
    runs = np.load(workdir / "scores" / score / f"step_{step}.runs.npy")
    assert runs.shape == (members, 160) and np.all(np.isfinite(runs)), (score, step)
  for r in range(2):
    run = workdir / "score_runs" / "runs" / f"run_{r}"
    assert json.loads((run / "summary.json").read_text())["final_step"] == 5
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted((r["key"], r["prune_fraction"]) for r in summary["rows"]) == [
      ("el2n-hardest", 0.5), ("full", 0.0), ("random", 0.5)]
  assert all(r["num_steps"] == 15 for r in summary["rows"])
  assert summary["spearman"]["el2n|el2n"] == pytest.approx(1.0)
  assert len(_outputs(notebook, "image/png")) == 3  # curves, histograms, accuracy plot


def test_dynamic_pruning_notebook_runs_the_sweep(tmp_path, kernel_name, monkeypatch, cli_env):
  notebook = _execute("dynamic_pruning", tmp_path, kernel_name, monkeypatch, cli_env)
  results = tmp_path / "workdirs" / "notebook_dynamic_pruning_smoke" / "dynamic" / "results"
  table = {r["method"]: r for r in _read_csv(results / "results.csv")}
  # The smoke size: full data, dynamic EL2N at keep 50 %, InfoBatch at r = 0.5, one seed.
  assert sorted(table) == ["dynamic_el2n", "full", "infobatch"]
  assert all(r["num_ok"] == "1" for r in table.values())
  assert float(table["full"]["compute_fraction"]) == pytest.approx(1.0)
  # Dynamic EL2N trains half the data after its 1-epoch warm-up of 3 epochs: (1 + 2 x 0.5)
  # / 3 of the examples plus a third of a step per scored example (2 scorings of all).
  n = 1442
  full_examples = 3 * (n // 32) * 32
  trained = (n // 32) * 32 + 2 * (int(round(0.5 * n)) // 32) * 32
  expected = (trained + 2 * n / 3) / full_examples
  assert float(table["dynamic_el2n"]["compute_fraction"]) == pytest.approx(expected, rel=0.02)
  assert 0 < float(table["infobatch"]["compute_fraction"]) < 1
  assert float(table["full"]["test_accuracy_mean"]) > 0.5
  assert len(_outputs(notebook, "image/png")) == 1


NLP_TAR = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "nlp-text.tar.gz"))


def _softmax(x):
  import numpy as np
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.skipif(not os.path.exists(NLP_TAR), reason="shared nlp-text.tar.gz absent")
def test_text_notebook_scores_prunes_and_retrains_snips(tmp_path, kernel_name, monkeypatch,
                                                        cli_env):
  import numpy as np
  from datadiet_jax.data.sources import load_text_dataset
  from datadiet_jax.data.text import IGNORE_ID
  from datadiet_jax.models import get_text_model
  from datadiet_jax.models.bert import BertConfig
  from datadiet_jax.scores import load_variables
  from datadiet_jax.train.loop import TrainConfig, build_run
  from datadiet_jax.train.optimizer import OptimizerConfig
  notebook = _execute("text_data_diet", tmp_path, kernel_name, monkeypatch, cli_env,
                      [("DATADIET_NLP_DATA", NLP_TAR)])
  workdir = tmp_path / "workdirs" / "notebook_text_data_diet_smoke"
  summary = json.loads((workdir / "results" / "notebook_summary.json").read_text())
  # The smoke size: 40 SNIPS utterances per intent, 32 tokens, 1 score run to step 32.
  dataset = load_text_dataset("joint_nlu", NLP_TAR, 32, "snips", train_per_class=40,
                              subset_seed=0)
  n, step = dataset.num_train, summary["score_step"]
  assert summary["num_train"] == n == 280 and step == 4 * (n // 32)
  el2n = np.load(workdir / "scores" / "el2n" / f"step_{step}.npy")
  per_run = np.load(workdir / "scores" / "el2n" / f"step_{step}.runs.npy")
  assert el2n.shape == (n,) and per_run.shape == (1, n) and np.all(np.isfinite(el2n))

  # The joint EL2N of a few utterances, recomputed by hand in numpy from the score run's
  # checkpoint at the score step: sqrt(e_int^2 + sum over labelled tokens of e_t^2).
  model = get_text_model(dataset.num_classes, dataset.num_tags,
                         BertConfig(**summary["bert_config"]))
  optimizer = OptimizerConfig(optimizer="adamw", schedule="linear", warmup_steps=2)
  state_like, _, _, _ = build_run(model, dataset, optimizer,
                                  TrainConfig(num_steps=step, batch_size=32, augment=False),
                                  42, 4242)
  variables = load_variables(str(workdir / "score_runs" / "runs" / "run_0" / "checkpoints"),
                             step, state_like)
  ids = np.array([0, 57, 139, 222, 279])
  outputs = model.apply(variables, dataset.train_inputs(ids), train=False)
  intent = _softmax(np.asarray(outputs["intent"], np.float64))
  slots = _softmax(np.asarray(outputs["slots"], np.float64))
  for row, i in enumerate(ids):
    squared = np.sum((intent[row] - np.eye(dataset.num_classes)[dataset.train_labels[i]]) ** 2)
    for t in np.flatnonzero(dataset.train_token_labels[i] != IGNORE_ID):
      tag = dataset.train_token_labels[i, t]
      squared += np.sum((slots[row, t] - np.eye(dataset.num_tags)[tag]) ** 2)
    assert per_run[0, i] == pytest.approx(np.sqrt(squared), rel=1e-4), i
  np.testing.assert_allclose(el2n, per_run[0], rtol=1e-6)

  # The kept subsets at 50 % pruned: the 140 highest scores, and the 140 after the top 5 %
  # (14 utterances) for the offset window.
  order = np.argsort(-el2n, kind="stable")
  subsets = workdir / "subsets"
  np.testing.assert_array_equal(
      np.load(subsets / "el2n-hardest" / "prune_50" / "seed_0" / "kept_ids.npy"),
      np.sort(order[:140]))
  np.testing.assert_array_equal(
      np.load(subsets / "el2n-offset5" / "prune_50" / "seed_0" / "kept_ids.npy"),
      np.sort(order[14:154]))

  # The table: full data and the 3 methods at 50 % pruned, one seed each, every run ok, with
  # intent accuracy and slot F1 (the run's summary.json value for the full-data run).
  table = {(r["method"], float(r["prune_fraction"])): r
           for r in _read_csv(workdir / "results" / "results.csv")}
  assert sorted(table) == sorted([
      ("full data", 0.0), ("random", 0.5), (f"EL2N@{step}, keep hardest", 0.5),
      (f"EL2N@{step}, offset window (top 5 % skipped)", 0.5)])
  assert all(r["num_ok"] == "1" for r in table.values())
  full = json.loads((workdir / "full" / "seed_0" / "summary.json").read_text())
  assert float(table[("full data", 0.0)]["test_accuracy_mean"]) == pytest.approx(
      full["test_accuracy"])
  assert float(table[("full data", 0.0)]["test_slot_f1_mean"]) == pytest.approx(
      full["test_slot_f1"])
  assert full["test_accuracy"] > 0.3  # 7 intents: chance is 1/7
  assert all(0.0 <= float(r["test_slot_f1_mean"]) <= 1.0 for r in table.values())

  # Dynamic: full data, dynamic EL2N and dynamic random at keep 50 %, 4 epochs, warm-up 1.
  # Compute: 8 full steps of 32, then 3 epochs of the 140 kept (4 steps of 32), plus a third
  # of a step per scored example for EL2N's 3 re-scorings of all 280.
  dynamic = {r["method"]: r for r in
             _read_csv(workdir / "dynamic" / "results" / "results.csv")}
  assert sorted(dynamic) == ["dynamic_el2n", "dynamic_random", "full"]
  assert all(r["num_ok"] == "1" for r in dynamic.values())
  full_examples = 4 * (n // 32) * 32
  trained = (n // 32) * 32 + 3 * (140 // 32) * 32
  assert float(dynamic["dynamic_el2n"]["compute_fraction"]) == pytest.approx(
      (trained + 3 * n / 3) / full_examples, rel=0.02)
  assert float(dynamic["dynamic_random"]["compute_fraction"]) == pytest.approx(
      trained / full_examples, rel=0.02)
  # The EL2N histogram, the accuracy plot, the slot-F1 plot, the dynamic plot.
  assert len(_outputs(notebook, "image/png")) == 4
  assert any("| hardest |" in o["data"]["text/markdown"]
             for o in _outputs(notebook, "text/markdown"))
