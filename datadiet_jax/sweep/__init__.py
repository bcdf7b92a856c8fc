"""Running one sweep in several processes or on several hosts that share a workdir.

partition.py  which runs / which example shard worker i of K owns (--num_workers,
              --worker_index)
lock.py       a per-run lock file with stale-lock recovery
runner.py     run this worker's share of a stage, or (before a stage others depend on)
              every run of it, skipping or waiting for runs other processes hold

Standard library only, below every other layer (like artifacts.py).
"""
