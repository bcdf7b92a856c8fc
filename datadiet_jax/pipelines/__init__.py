"""Resumable multi-run pipelines that Python users (scripts, notebooks) import; experiments/
only parses flags into their configs. Modality-agnostic:

  figure1.py         the Figure-1 sweep (score runs -> scores -> prune -> train -> tables)
  dynamic_sweep.py   the dynamic-pruning sweep
  pool_selection.py  choosing a subset from a pool (base runs score the pool, then train)
  score_timing.py    scores computed at several training steps
  train_runs.py      the train stage: N seeded runs of one config (lone or ensembled)
  score_runs.py      the score stage: per-run scores of a run folder, sharded over workers
"""
