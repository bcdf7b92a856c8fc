"""Statistics and tables of a sweep's runs: per-cell mean, std and t-interval, paired
comparisons against a baseline, and outcomes (diverged / failed runs are counted, never
averaged in as accuracies).

Modality-agnostic: every function takes `RunOutcome` rows (method, fraction, seed, outcome,
accuracy), whatever produced them (Figure 1 on images or text, dynamic-pruning sweeps).

Outcomes ("ok", "diverged", "failed") are defined by datadiet_jax/train/outcome.py (a run's
summary.json records one; `outcome_of_summary` there reads it, or classifies older
summaries from their final test loss).

Pairing: seed index m of every method uses the same model seed and data seed (the same
init and the same batch-order seed), so method and baseline at one seed index form a pair;
the paired t-test on the per-seed differences removes the seed-to-seed variation the two
share.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np

from datadiet_jax.train.outcome import OUTCOMES


_NO_SPREAD = 1e-9  # a std of paired differences below this is zero up to float rounding


class RunOutcome(NamedTuple):
  """One finished run of a sweep. accuracy: a fraction in [0, 1] (meaningful only if ok)."""

  method: str
  fraction: float
  seed: int
  outcome: str
  accuracy: float


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
  """Two-sided Student-t confidence interval of the mean: mean ± t_{n-1} s / sqrt(n).

  (nan, nan) with fewer than 2 values (no spread to estimate).
  """
  from scipy import stats
  x = np.asarray(values, np.float64)
  if len(x) < 2:
    return float("nan"), float("nan")
  half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
  return float(x.mean() - half), float(x.mean() + half)


@dataclasses.dataclass(frozen=True)
class CellStats:
  """Accuracy of one (method, fraction) cell over its ok runs; counts of every outcome."""

  method: str
  fraction: float
  num_ok: int
  num_diverged: int
  num_failed: int
  mean: float        # nan if no ok run
  std: float         # sample std (ddof=1); nan if < 2 ok runs
  ci_low: float      # 95 % t-interval of the mean; nan if < 2 ok runs
  ci_high: float
  seeds_ok: tuple[int, ...]

  @property
  def num_runs(self) -> int:
    return self.num_ok + self.num_diverged + self.num_failed

  def outcomes_text(self) -> str:
    """E.g. '3 ok' or '2 ok, 1 diverged'."""
    counts = zip(OUTCOMES, (self.num_ok, self.num_diverged, self.num_failed))
    return ", ".join(f"{n} {name}" for name, n in counts if n or name == "ok")


def _check(runs: Iterable[RunOutcome]) -> list[RunOutcome]:
  runs = [RunOutcome(*r) for r in runs]
  for r in runs:
    if r.outcome not in OUTCOMES:
      raise ValueError(f"run {r}: outcome must be one of {', '.join(OUTCOMES)}")
  return runs


def cell_stats(runs: Iterable[RunOutcome], confidence: float = 0.95) -> list[CellStats]:
  """One CellStats per (method, fraction), in order of first appearance."""
  groups: dict = {}
  for r in _check(runs):
    groups.setdefault((r.method, float(r.fraction)), []).append(r)
  cells = []
  for (method, fraction), group in groups.items():
    ok = sorted((r for r in group if r.outcome == "ok"), key=lambda r: r.seed)
    accs = np.asarray([r.accuracy for r in ok], np.float64)
    low, high = t_interval(accs, confidence)
    cells.append(CellStats(
        method=method, fraction=fraction, num_ok=len(ok),
        num_diverged=sum(r.outcome == "diverged" for r in group),
        num_failed=sum(r.outcome == "failed" for r in group),
        mean=float(accs.mean()) if len(accs) else float("nan"),
        std=float(accs.std(ddof=1)) if len(accs) > 1 else float("nan"),
        ci_low=low, ci_high=high, seeds_ok=tuple(r.seed for r in ok)))
  return cells


@dataclasses.dataclass(frozen=True)
class PairedStats:
  """method - baseline at one fraction, over the seeds where both runs are ok."""

  method: str
  baseline: str
  fraction: float
  num_pairs: int
  mean_difference: float   # nan if no pair
  ci_low: float            # t-interval of the mean difference; nan if < 2 pairs
  ci_high: float
  p_value: float           # two-sided paired t-test; nan if < 2 pairs or if every pair
                           # differs by the same amount (the t statistic is undefined)
  seeds_unpaired: tuple[int, ...]  # seeds of either run that lack an ok partner


def paired_comparisons(runs: Iterable[RunOutcome], baseline: str = "random",
                       confidence: float = 0.95) -> list[PairedStats]:
  """Paired by seed index: every other method against `baseline` at each of its fractions."""
  from scipy import stats
  runs = _check(runs)
  by_cell: dict = {}
  for r in runs:
    by_cell.setdefault((r.method, float(r.fraction)), {})[r.seed] = r
  out = []
  for (method, fraction), cell in by_cell.items():
    base = by_cell.get((baseline, fraction))
    if method == baseline or base is None:
      continue
    seeds = sorted(s for s in cell if s in base and cell[s].outcome == "ok"
                   and base[s].outcome == "ok")
    unpaired = tuple(sorted((set(cell) | set(base)) - set(seeds)))
    diffs = np.asarray([cell[s].accuracy - base[s].accuracy for s in seeds], np.float64)
    low, high = t_interval(diffs, confidence)
    p = float("nan")  # undefined with < 2 pairs, or identical differences (no spread)
    if len(diffs) > 1 and diffs.std(ddof=1) > _NO_SPREAD:
      p = float(stats.ttest_rel([cell[s].accuracy for s in seeds],
                                [base[s].accuracy for s in seeds]).pvalue)
    out.append(PairedStats(method=method, baseline=baseline, fraction=fraction,
                           num_pairs=len(seeds),
                           mean_difference=float(diffs.mean()) if len(diffs) else float("nan"),
                           ci_low=low, ci_high=high, p_value=p, seeds_unpaired=unpaired))
  return out


def outcome_counts(runs: Iterable[RunOutcome]) -> dict:
  """{'ok': n, 'diverged': n, 'failed': n} over all runs."""
  runs = _check(runs)
  return {name: sum(r.outcome == name for r in runs) for name in OUTCOMES}


def outcome_summary_line(runs: Iterable[RunOutcome]) -> str:
  """E.g. '33 runs finished: 31 ok, 1 diverged, 1 failed (not averaged in).'"""
  counts = outcome_counts(runs)
  total = sum(counts.values())
  line = f"{total} runs finished: " + ", ".join(f"{counts[k]} {k}" for k in OUTCOMES)
  bad = counts["diverged"] + counts["failed"]
  return line + (" (diverged/failed runs are counted, not averaged in)." if bad else ".")


def task_metrics(rows: Sequence[dict]) -> list[str]:
  """The task's extra test metrics of run summaries / rows beyond accuracy and loss (e.g.
  test_slot_f1 for joint intent + slot data), in first-seen order."""
  return list(dict.fromkeys(k for r in rows for k in r if k.startswith("test_")
                            and k not in ("test_accuracy", "test_loss")
                            and not k.endswith(("_mean", "_std"))))


def task_metric_columns(table: Sequence[dict]) -> list[str]:
  """The extra metrics a summary table holds as `<metric>_mean` columns (e.g.
  ['test_slot_f1']); [] for images and sentence classification."""
  return [k[:-len("_mean")] for k in (table[0] if table else {})
          if k.startswith("test_") and k.endswith("_mean") and k != "test_accuracy_mean"]


def _pct(x: float) -> str:
  return f"{100 * x:.2f}"


def cell_text(cell: Optional[CellStats]) -> str:
  """'51.20 ± 0.83 [49.14, 53.26] (n=3)'; outcomes spelled out when any run was not ok."""
  if cell is None:
    return ""
  counts = (f"n={cell.num_ok}" if cell.num_ok == cell.num_runs else cell.outcomes_text())
  if cell.num_ok == 0:
    return f"— ({counts})"
  if cell.num_ok == 1:
    return f"{_pct(cell.mean)} ({counts})"
  return (f"{_pct(cell.mean)} ± {_pct(cell.std)} [{_pct(cell.ci_low)}, {_pct(cell.ci_high)}] "
          f"({counts})")


def markdown_accuracy_table(cells: Sequence[CellStats]) -> str:
  """Rows = methods, columns = fractions (as '% pruned'); accuracies in %."""
  if not cells:
    return "(no run has finished yet)"
  fractions = sorted({c.fraction for c in cells})
  methods = list(dict.fromkeys(c.method for c in cells))
  by_key = {(c.method, c.fraction): c for c in cells}
  lines = ["| method | " + " | ".join(f"{f:.0%} pruned" for f in fractions) + " |",
           "|---|" + "---|" * len(fractions)]
  for method in methods:
    lines.append(f"| {method} | "
                 + " | ".join(cell_text(by_key.get((method, f))) for f in fractions) + " |")
  return "\n".join(lines)


def markdown_paired_table(pairs: Sequence[PairedStats],
                          fraction_header: Optional[str] = "% pruned") -> str:
  """One row per (method, fraction): mean difference in points, its t-interval, p-value.

  `fraction_header` names the fraction column ("% pruned", "keep", ...); None leaves the
  column out (e.g. every pair is against full data at one fraction)."""
  fraction = fraction_header is not None
  lines = [f"| method |{f' {fraction_header} |' if fraction else ''} pairs | "
           "mean difference (points) | 95 % CI | paired t-test p |",
           "|---|---|---|---|---|" + ("---|" if fraction else "")]
  for p in sorted(pairs, key=lambda p: p.fraction):
    diff = "—" if p.num_pairs == 0 else f"{100 * p.mean_difference:+.2f}"
    ci = ("—" if p.num_pairs < 2 else
          f"[{100 * p.ci_low:+.2f}, {100 * p.ci_high:+.2f}]")
    pval = ("—" if p.num_pairs < 2 else "— (equal differences)" if math.isnan(p.p_value)
            else f"{p.p_value:.3g}")
    note = f" (seeds {', '.join(map(str, p.seeds_unpaired))} unpaired)" if p.seeds_unpaired else ""
    lines.append(f"| {p.method} |{f' {p.fraction:.0%} |' if fraction else ''} "
                 f"{p.num_pairs}{note} | {diff} | {ci} | {pval} |")
  return "\n".join(lines)


def cells_as_rows(cells: Sequence[CellStats]) -> list[dict]:
  """CSV-ready dicts (accuracies as fractions)."""
  return [{"method": c.method, "prune_fraction": c.fraction, "num_ok": c.num_ok,
           "num_diverged": c.num_diverged, "num_failed": c.num_failed,
           "test_accuracy_mean": c.mean, "test_accuracy_std": c.std,
           "ci95_low": c.ci_low, "ci95_high": c.ci_high} for c in cells]


def pairs_as_rows(pairs: Sequence[PairedStats]) -> list[dict]:
  return [{"method": p.method, "baseline": p.baseline, "prune_fraction": p.fraction,
           "num_pairs": p.num_pairs, "mean_difference": p.mean_difference,
           "ci95_low": p.ci_low, "ci95_high": p.ci_high, "p_value": p.p_value,
           "seeds_unpaired": " ".join(map(str, p.seeds_unpaired))} for p in pairs]


def plot_accuracy_vs_fraction(path: str, runs: Sequence[RunOutcome], title: str,
                              reference: Optional[str] = "full data") -> None:
  """Mean test accuracy of the ok runs with 95 % t-interval bars per method, every ok seed as
  a dot, and each diverged (x) / failed (v) run as a marker in its method's colour on the
  plot's floor — never at an accuracy; a cell with runs that are not ok is annotated 'k/n ok'.
  `reference` (e.g. the full-data runs at fraction 0) starts every line."""
  # A pyplot-free Figure: no global backend switch (an inline notebook keeps its plots).
  from matplotlib.figure import Figure
  from matplotlib.lines import Line2D

  from datadiet_jax import artifacts
  runs = _check(runs)
  cells = cell_stats(runs)
  fig = Figure(figsize=(6.8, 4.6))
  ax = fig.subplots()
  ok_accs = [r.accuracy for r in runs if r.outcome == "ok"]
  floor = 100 * (min(ok_accs) if ok_accs else 0.0) - 4
  markers = {"diverged": "x", "failed": "v"}
  methods = list(dict.fromkeys(c.method for c in cells if c.method != reference))
  if reference in {c.method for c in cells}:
    methods.insert(0, reference)
  for i, method in enumerate(methods):
    color = "black" if method == reference else f"C{(i - 1) % 10}"
    dx = 0.0 if method == reference else 0.7 * (i - len(methods) / 2)
    mine = sorted((c for c in cells if c.method == method), key=lambda c: c.fraction)
    line = ([c for c in cells if c.method == reference] if method != reference else []) + mine
    line = [c for c in line if c.num_ok]
    ax.errorbar([100 * c.fraction for c in line], [100 * c.mean for c in line],
                yerr=[[100 * (c.mean - c.ci_low) if c.num_ok > 1 else 0 for c in line],
                      [100 * (c.ci_high - c.mean) if c.num_ok > 1 else 0 for c in line]],
                marker="o", capsize=3, color=color, label=method)
    ok = [r for r in runs if r.method == method and r.outcome == "ok"]
    ax.scatter([100 * r.fraction + dx for r in ok], [100 * r.accuracy for r in ok], s=9,
               color=color, alpha=0.5, zorder=3)
    for outcome, marker in markers.items():
      bad = [r for r in runs if r.method == method and r.outcome == outcome]
      ax.scatter([100 * r.fraction + dx for r in bad], [floor] * len(bad), marker=marker, s=60,
                 color=color, zorder=4)
    for c in mine:
      if c.num_ok < c.num_runs:
        ax.annotate(f"{c.num_ok}/{c.num_runs} ok", (100 * c.fraction + dx, floor),
                    textcoords="offset points", xytext=(0, 7), ha="center", fontsize=6,
                    color=color)
  handles, labels = ax.get_legend_handles_labels()
  for outcome, marker in markers.items():
    if any(r.outcome == outcome for r in runs):
      handles.append(Line2D([], [], marker=marker, color="gray", linestyle="none"))
      labels.append(f"{outcome} run (not averaged)")
  ax.set_xlabel("fraction of training data pruned (%)")
  ax.set_ylabel("final test accuracy (%), mean and 95 % CI")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(handles, labels, fontsize=7)
  fig.tight_layout()
  with artifacts.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=120)
