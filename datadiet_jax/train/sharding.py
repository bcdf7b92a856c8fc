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
  """Places every array of `batch` split over the mesh's 'data' axis."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), batch)


def replicate(tree, mesh: Mesh):
  """Places every leaf of `tree` fully replicated over the mesh."""
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)
