"""Prints the README table of the ATIS MiniLM static-pruning sweep from the report files
beside this script (results.csv, paired_vs_random.csv, paired_offset_vs_hardest.csv, written
by `python -m experiments.text --flagfile=experiments/flags/atis_minilm_figure1.flags
--figure1_report_only`): one row per cell, with its paired differences. Bold: the 95 %
interval excludes 0."""
import csv
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def read_rows(name: str) -> list[dict]:
  with open(os.path.join(HERE, name), newline="") as f:
    return list(csv.DictReader(f))


def pairs_by_cell(name: str) -> dict:
  return {(r["method"], r["prune_fraction"]): r for r in read_rows(name)}


def difference_text(pair) -> str:
  """'+1.42 [+0.29, +2.54]' in points; bold when the interval excludes 0."""
  if pair is None:
    return ""
  mean = 100 * float(pair["mean_difference"])
  low, high = 100 * float(pair["ci95_low"]), 100 * float(pair["ci95_high"])
  if int(pair["num_pairs"]) < 2 or math.isnan(low):
    return f"{mean:+.2f} (n={pair['num_pairs']})"
  text = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
  return f"**{text}**" if low > 0 or high < 0 else text


def short_name(method: str) -> str:
  return (method.replace("@139", "").replace("grand_head", "head GraNd")
          .replace(", offset window (top ", ", skip top ").replace(" % skipped)", " %"))


def main() -> None:
  vs_random = pairs_by_cell("paired_vs_random.csv")
  vs_hardest = pairs_by_cell("paired_offset_vs_hardest.csv")
  print("| method | % pruned | n | intent accuracy (%) | slot F1 | vs random (points) [95 % CI] "
        "| offset vs keep hardest [95 % CI] |")
  print("|---|---|---|---|---|---|---|")
  for cell in read_rows("results.csv"):
    std = cell["test_accuracy_std"]
    std = "" if std in ("", "nan") else f" ± {100 * float(std):.2f}"
    key = (cell["method"], cell["prune_fraction"])
    print(f"| {short_name(cell['method'])} | {float(cell['prune_fraction']):.0%} | "
          f"{cell['num_ok']} | {100 * float(cell['test_accuracy_mean']):.2f}{std} | "
          f"{float(cell['test_slot_f1_mean']):.3f} | {difference_text(vs_random.get(key))} | "
          f"{difference_text(vs_hardest.get(key))} |")


if __name__ == "__main__":
  main()
