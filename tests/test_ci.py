"""The fresh-install guarantee: CI runs the README's test command in a new venv, and every
third-party module the code imports is declared in pyproject.toml.

A package installed by hand once made CI green while the README's command failed on a fresh
machine (`mnist1d`); these tests make that class of mistake fail here instead.
"""

import ast
import os
import re
import subprocess
import sys
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Import name -> distribution name, where they differ.
DIST_OF_IMPORT = {"PIL": "pillow", "sklearn": "scikit-learn", "absl": "absl-py",
                  "orbax": "orbax-checkpoint", "tensorflow_datasets": "tensorflow-datasets",
                  "tensorflow": "tensorflow-cpu", "yaml": "pyyaml", "google": "protobuf",
                  "backpack": "backpack-for-pytorch"}
FIRST_PARTY = {"datadiet_jax", "experiments", "third_party", "tests", "conftest"} | {
    name[:-3] for name in os.listdir(os.path.dirname(os.path.abspath(__file__)))
    if name.endswith(".py")}  # test modules importing each other's helpers
# Extras that the README's test command does not install: tests that need them must skip.
NOT_INSTALLED_BY_TESTS = {"tfds"}


def _requirement_name(requirement: str) -> str:
  name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()
  return re.sub(r"[-_.]+", "-", name)  # PEP 503: array_record == array-record


def _declared() -> tuple[set, dict]:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  core = {_requirement_name(r) for r in project["dependencies"]}
  extras = {name: {_requirement_name(r) for r in reqs}
            for name, reqs in project.get("optional-dependencies", {}).items()}
  return core, extras


def _third_party_imports(folder: str) -> dict:
  """{top-level module: [files importing it]} for every import in the folder's .py files."""
  found: dict = {}
  for root, _, files in os.walk(os.path.join(REPO, folder)):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      with open(path) as f:
        tree = ast.parse(f.read(), path)
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          modules = [node.module]
        else:
          continue
        for module in modules:
          top = module.split(".")[0]
          if top in sys.stdlib_module_names or top in FIRST_PARTY:
            continue
          found.setdefault(top, []).append(os.path.relpath(path, REPO))
  return found


def test_every_imported_package_is_declared():
  core, extras = _declared()
  declared = core | set().union(*extras.values())
  undeclared = {}
  for folder in ("datadiet_jax", "experiments", "tests", "third_party"):
    for module, files in _third_party_imports(folder).items():
      dist = DIST_OF_IMPORT.get(module, module).lower().replace("_", "-")
      if dist not in declared and module.lower() not in declared:
        undeclared[module] = sorted(set(files))
  assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"


def test_runtime_imports_need_no_test_or_benchmark_extra():
  """The package itself (datadiet_jax/) imports only core deps or the optional TFDS extra."""
  core, extras = _declared()
  allowed = core | extras.get("tfds", set())
  bad = {}
  for module, files in _third_party_imports("datadiet_jax").items():
    dist = DIST_OF_IMPORT.get(module, module).lower().replace("_", "-")
    if dist not in allowed:
      bad[module] = sorted(set(files))
  assert not bad, f"the runtime imports packages from test/benchmark extras: {bad}"


def test_readme_test_command_installs_the_extras_the_tests_import():
  core, extras = _declared()
  command = _readme_test_command()
  installed_extras = set(re.search(r'"\.\[([^\]]*)\]"', command).group(1).split(","))
  assert not installed_extras & NOT_INSTALLED_BY_TESTS
  available = core | set().union(*(extras[e] for e in installed_extras))
  missing = {}
  for module, files in _third_party_imports("tests").items():
    dist = DIST_OF_IMPORT.get(module, module).lower().replace("_", "-")
    if dist in available or module.lower() in available:
      continue
    # A test of a feature whose extra is not installed must skip with a reason.
    for path in set(files):
      with open(os.path.join(REPO, path)) as f:
        text = f.read()
      if f'importorskip("{module}"' not in text:
        missing.setdefault(module, []).append(path)
  assert not missing, f"tests import packages the test command does not install: {missing}"


def _readme_test_command() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    lines = [l.strip() for l in f if l.startswith('python3 -m pip install -e ".[test')]
  assert lines, "README.md has no test command"
  return lines[0]


def test_ci_script_runs_the_readme_command_in_a_fresh_venv():
  """.ci/run extracts exactly the README's line, and makes a new venv before running it."""
  script = os.path.join(REPO, ".ci", "run")
  with open(script) as f:
    text = f.read()
  assert "python3 -m venv" in text and 'rm -rf "$VENV"' in text
  # Run the script's extraction line on the README, exactly as CI will.
  extraction = re.search(r'TEST_COMMAND="\$\((.*)\)"', text).group(1)
  out = subprocess.run(["bash", "-c", extraction], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == _readme_test_command()
  assert "pytest tests" in out
