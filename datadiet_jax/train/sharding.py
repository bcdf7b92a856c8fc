"""Data parallelism with jax.sharding: the batch is split along its first axis over a
1-D device mesh and the state is replicated; jit inserts the gradient all-reduce.

Multi-host: call `jax.distributed.initialize()` before building the mesh (the CLI
does this with --distributed); each host then feeds its addressable shard.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_parallel_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Places every array of the *global* host batch split over the mesh's 'data' axis.

  Every process holds the same global batch (the batch schedule is a pure function
  of the step), and each fills only its addressable shards, so this works unchanged
  on one host or many.
  """
  return jax.tree_util.tree_map(
      lambda x: place_process_rows(np.asarray(x)[process_rows(mesh, np.shape(x)[0])], mesh),
      batch)


def process_rows(mesh: Mesh, batch_size: int) -> slice:
  """The rows of a global batch of `batch_size` that this process's devices hold on the
  mesh's 'data' axis: one contiguous block (all rows in a single process).

  Each process of a multi-host program reads only these rows of every batch
  (`place_process_rows`), not the whole global batch.
  """
  if batch_size % mesh.size:
    raise ValueError(f"batch of {batch_size} does not split over {mesh.size} devices; "
                     "use a batch size divisible by the device count")
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  blocks = sorted({index[0].indices(batch_size)[:2] for index in
                   sharding.addressable_devices_indices_map((batch_size,)).values()})
  start, stop = blocks[0]
  for lo, hi in blocks[1:]:
    if lo != stop:
      raise ValueError(f"this process's rows of a batch of {batch_size} are not one block "
                       f"({blocks}); order the mesh's devices by process")
    stop = hi
  return slice(start, stop)


def place_process_rows(local_batch: dict, mesh: Mesh) -> dict:
  """Global arrays over the mesh's 'data' axis from this process's rows of a batch (the
  rows `process_rows` names; every process passes the same number of them)."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree, mesh: Mesh):
  """Places every leaf of `tree` fully replicated over the mesh."""
  sharding = NamedSharding(mesh, PartitionSpec())

  def put(x):
    # From host memory, shard by shard: on several hosts each process fills only its own
    # devices (device_put of a process-local array cannot build a multi-host array).
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(put, tree)


def ensemble_mesh(num_members: int, devices=None) -> Mesh:
  """A 2-D ('members', 'data') mesh: the members axis takes the largest divisor of the
  device count that also divides `num_members`; the rest of the devices split each
  member's batch. 8 devices, 4 members -> 4 x 2; 8 devices, 3 members -> 1 x 8."""
  devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
  members = max(d for d in range(1, len(devices) + 1)
                if len(devices) % d == 0 and num_members % d == 0)
  return Mesh(devices.reshape(members, len(devices) // members), ("members", "data"))
