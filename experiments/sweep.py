"""Flags for running a sweep as K workers (see datadiet_jax/sweep/).

  --num_workers=K --worker_index=i   worker i of K: it trains its share of every stage's runs
  (round robin over the sweep order) and scores its contiguous shard of the examples.
"""

from __future__ import annotations

from absl import flags

from datadiet_jax.sweep.partition import Worker

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_workers", 1, "Split the sweep over this many workers (processes or "
                     "hosts sharing --workdir; e.g. a Slurm job array).", lower_bound=1)
flags.DEFINE_integer("worker_index", 0, "This worker's index in 0..--num_workers-1 (Slurm: "
                     "$SLURM_ARRAY_TASK_ID).", lower_bound=0)


def worker_from_flags() -> Worker:
  return Worker(FLAGS.num_workers, FLAGS.worker_index)


# Multi-host training (--distributed): one process per host (TPU VM worker, GPU node)
# trains each run together; leave these unset where jax detects the cluster itself
# (Cloud TPU, Slurm, Open MPI, Kubernetes).
flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0's "
                    "coordinator (default: $JAX_COORDINATOR_ADDRESS or auto-detected).")
flags.DEFINE_integer("num_processes", None, "--distributed: number of processes (hosts).",
                     lower_bound=1)
flags.DEFINE_integer("process_id", None, "--distributed: this process's index.",
                     lower_bound=0)


def initialize_distributed() -> None:
  """jax.distributed.initialize with the flags that are set (the rest auto-detected)."""
  import jax
  kwargs = {name: FLAGS[name].value for name in ("coordinator_address", "num_processes",
                                                  "process_id")
            if FLAGS[name].value is not None}
  jax.distributed.initialize(**kwargs)
