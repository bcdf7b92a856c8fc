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
  table = {(r["method"], float(r["prune_fraction"])): float(r["test_accuracy_mean"])
           for r in _read_csv(results / "results.csv")}
  # The smoke size: full data, and 3 methods at 50 % pruned, one seed each.
  assert sorted(table) == sorted([("full data", 0.0), ("random", 0.5),
                                  ("EL2N@20, keep hardest", 0.5),
                                  ("GraNd@init, keep hardest", 0.5)])
  assert all(0.0 <= acc <= 1.0 for acc in table.values())
  # Even 2 epochs of a 4-filter CNN beat chance (10 %) on digits by far.
  assert table[("full data", 0.0)] > 0.3
  assert len(_outputs(notebook, "image/png")) >= 2  # the accuracy plot and the heatmap
  assert any("| method |" in o["data"]["text/markdown"]
             for o in _outputs(notebook, "text/markdown"))
