"""No import cycles among datadiet_jax's modules (issue 21, item 3).

The graph is read from each module's `import` / `from ... import` statements (function-level
ones too, so a lazy import may not close a cycle either). `from pkg import sub` where `sub` is
a module is an edge to `pkg.sub`; the implicit import of a parent package is not an edge.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def module_files(root: pathlib.Path, package: str) -> dict:
  """{dotted module name: path} of every .py file under root/package."""
  mods = {}
  for path in sorted((root / package).rglob("*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    mods[".".join(parts)] = path
  return mods


def import_graph(root: pathlib.Path, package: str) -> dict:
  """{module: set of package modules it imports}."""
  mods = module_files(root, package)
  graph = {}
  for name, path in mods.items():
    deps = set()
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = here[:len(here) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        subs = [f"{base}.{alias.name}" for alias in node.names]
        targets = [s for s in subs if s in mods]
        if len(targets) < len(subs):
          targets.append(base)
      else:
        continue
      deps.update(t for t in targets if t in mods and t != name)
    graph[name] = deps
  return graph


def cycles(graph: dict) -> list:
  """Strongly connected components of more than one module (each a sorted list)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_checker_finds_a_lazy_cycle_and_ignores_parent_packages(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("from pkg.sub import b\n")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "a.py").write_text("def f():\n  from pkg.sub import b\n")
  (pkg / "sub" / "b.py").write_text("from .. import a\n")
  (pkg / "c.py").write_text("from pkg.sub import b\n")
  graph = import_graph(tmp_path, "pkg")
  assert graph == {"pkg": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.a": {"pkg.sub.b"},
                   "pkg.sub.b": {"pkg.a"}, "pkg.c": {"pkg.sub.b"}}
  assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_datadiet_jax_has_no_import_cycles():
  graph = import_graph(ROOT, "datadiet_jax")
  assert "datadiet_jax.models.conv_config" in graph["datadiet_jax.models.onednn_conv"]
  assert cycles(graph) == []
