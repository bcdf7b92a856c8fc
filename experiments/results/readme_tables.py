"""Prints a README table from the report files of a sweep's results folder here:

  python3 experiments/results/readme_tables.py static experiments/results/atis_minilm_figure1
  python3 experiments/results/readme_tables.py dynamic experiments/results/atis_minilm_dynamic

static reads results.csv, paired_vs_random.csv and paired_offset_vs_hardest.csv (written by
`python -m experiments.text --flagfile=experiments/flags/atis_minilm_figure1.flags
--figure1_report_only`); dynamic reads results.csv and paired.csv (written by
`... --flagfile=experiments/flags/atis_minilm_dynamic.flags --dynamic_report_only`). Bold:
the 95 % interval excludes 0; pairs that all differ by the same amount have no t-interval
and are marked "all n pairs"."""
import csv
import math
import os
import sys


def read_rows(folder: str, name: str) -> list[dict]:
  with open(os.path.join(folder, name), newline="") as f:
    return list(csv.DictReader(f))


def pairs_by_cell(folder: str, name: str) -> dict:
  return {(r["method"], r["prune_fraction"]): r for r in read_rows(folder, name)}


def difference_text(pair) -> str:
  """'+1.42 [+0.29, +2.54]' in points; bold when the interval excludes 0."""
  if pair is None:
    return ""
  mean = 100 * float(pair["mean_difference"])
  low, high = 100 * float(pair["ci95_low"]), 100 * float(pair["ci95_high"])
  if int(pair["num_pairs"]) < 2 or math.isnan(low):
    return f"{mean:+.2f} (n={pair['num_pairs']})"
  if high - low < 1e-6:  # every pair differs by the same amount (to rounding): no interval
    return f"{mean:+.2f} (all {pair['num_pairs']} pairs)"
  text = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
  return f"**{text}**" if low > 0 or high < 0 else text


def accuracy_text(cell: dict) -> str:
  """'97.05 ± 0.45': a results.csv cell's mean accuracy ± std over seeds, in %."""
  std = cell["test_accuracy_std"]
  std = "" if std in ("", "nan") or int(cell["num_ok"]) < 2 else f" ± {100 * float(std):.2f}"
  return f"{100 * float(cell['test_accuracy_mean']):.2f}{std}"


def short_name(method: str) -> str:
  return (method.replace("@139", "").replace("grand_head", "head GraNd")
          .replace(", offset window (top ", ", skip top ").replace(" % skipped)", " %"))


def static_table(folder: str) -> None:
  """The static-pruning table (atis_minilm_figure1): one row per cell, with its paired
  differences vs random and, for offset windows, vs their score's keep-hardest."""
  vs_random = pairs_by_cell(folder, "paired_vs_random.csv")
  vs_hardest = pairs_by_cell(folder, "paired_offset_vs_hardest.csv")
  print("| method | % pruned | n | intent accuracy (%) | slot F1 | vs random (points) [95 % CI] "
        "| offset vs keep hardest [95 % CI] |")
  print("|---|---|---|---|---|---|---|")
  for cell in read_rows(folder, "results.csv"):
    key = (cell["method"], cell["prune_fraction"])
    print(f"| {short_name(cell['method'])} | {float(cell['prune_fraction']):.0%} | "
          f"{cell['num_ok']} | {accuracy_text(cell)} | "
          f"{float(cell['test_slot_f1_mean']):.3f} | {difference_text(vs_random.get(key))} | "
          f"{difference_text(vs_hardest.get(key))} |")


def dynamic_table(folder: str) -> None:
  """The dynamic-pruning table (atis_minilm_dynamic): one row per cell with its paired
  differences (vs full data; vs per-epoch random at the same keep fraction), its compute
  fraction, and the measured wall time of the whole run (training, scoring, evaluation,
  checkpoints, setup) as seconds and as the mean over seeds of its ratio to the same
  seed's full-data run (results.csv run_wall_seconds, run_wall_fraction)."""
  paired = {(r["method"], r["baseline"]): r for r in read_rows(folder, "paired.csv")}
  print("| method | setting | n | intent accuracy (%) | slot F1 | vs full data (points) "
        "[95 % CI] | vs per-epoch random (points) [95 % CI] | compute fraction | "
        "wall seconds per run (scoring) | wall fraction of full data |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for cell in read_rows(folder, "results.csv"):
    name = f"{cell['label']}, {cell['setting']}"
    wall, ratio, score = (float(cell[k]) for k in
                          ("run_wall_seconds", "run_wall_fraction", "score_seconds"))
    print(f"| {cell['label']} | {cell['setting']} | {cell['num_ok']} | "
          f"{accuracy_text(cell)} | "
          f"{float(cell['test_slot_f1_mean']):.3f} | "
          f"{difference_text(paired.get((name, 'full data')))} | "
          f"{difference_text(paired.get((name, 'dynamic random')))} | "
          f"{float(cell['compute_fraction']):.3f} | {wall:.0f} ({score:.0f}) | {ratio:.3f} |")


TABLES = {"static": static_table, "dynamic": dynamic_table}

if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] not in TABLES or not os.path.isdir(sys.argv[2]):
    sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TABLES)}}} RESULTS_FOLDER (a folder of the "
             "sweep's report files)")
  TABLES[sys.argv[1]](sys.argv[2])
