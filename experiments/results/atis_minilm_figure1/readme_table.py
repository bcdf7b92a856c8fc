"""The README table of atis_minilm_figure1 from this folder's results.csv, paired_vs_random.csv
and paired_offset_vs_hardest.csv (run from the repository root)."""
import csv, math
R = 'experiments/results/atis_minilm_figure1/'
cells = list(csv.DictReader(open(R + 'results.csv')))
pr = {(r['method'], r['prune_fraction']): r for r in csv.DictReader(open(R + 'paired_vs_random.csv'))}
po = {(r['method'], r['prune_fraction']): r for r in csv.DictReader(open(R + 'paired_offset_vs_hardest.csv'))}
def d(r):
  if r is None: return ''
  m = 100 * float(r['mean_difference']); lo, hi = 100 * float(r['ci95_low']), 100 * float(r['ci95_high'])
  if int(r['num_pairs']) < 2 or math.isnan(lo): return f"{m:+.2f} (n={r['num_pairs']})"
  s = f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"
  return f"**{s}**" if lo > 0 or hi < 0 else s
print("| method | % pruned | n | intent accuracy (%) | slot F1 | vs random (points) [95 % CI] | offset vs keep hardest [95 % CI] |")
print("|---|---|---|---|---|---|---|")
for c in cells:
  std = c['test_accuracy_std']; std = '' if std in ('', 'nan') else f" ± {100*float(std):.2f}"
  f = c['prune_fraction']; k = (c['method'], f)
  name = c['method'].replace('@139', '').replace('grand_head', 'head GraNd').replace(', offset window (top ', ', skip top ').replace(' % skipped)', ' %')
  print(f"| {name} | {float(f):.0%} | {c['num_ok']} | {100*float(c['test_accuracy_mean']):.2f}{std} | {float(c['test_slot_f1_mean']):.3f} | {d(pr.get(k))} | {d(po.get(k))} |")
