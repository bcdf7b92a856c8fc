"""Running one sweep in several processes or on several hosts that share a workdir.

partition.py  which runs / which example shard worker i of K owns (--num_workers,
              --worker_index)
lock.py       a per-run lock file with stale-lock recovery
runner.py     run this worker's share of a stage, or (before a stage others depend on)
              every run of it, skipping or waiting for runs other processes hold
processes.py  the processes of one jax.distributed program as workers of the score stage
              (a barrier before process 0 merges their shards; imports jax when called)

Standard library only (processes.py: jax, imported when called), below every other layer
(like artifacts.py).
"""
