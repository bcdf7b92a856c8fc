"""D2 pruning (Maharana, Yadav, Bansal: "D2 Pruning: Message Passing for Balancing Diversity
and Difficulty in Data Pruning", ICLR 2024; code: adymaharana/d2pruning).

The data set is a graph: node i carries the feature z_i (penultimate features of a trained
model, scores/features.py) and, as its initial value, a difficulty score x_i = s_i (here
EL2N by default, as the paper uses a difficulty score; forgetting and AUM work too); edges
join each node to its k nearest neighbours in Euclidean feature distance d(i, j).

  Forward message passing (Sec. 3, "message passing"): the message from neighbour j to node
  i is  m_{j->i} = exp(-gamma_f * d(i, j)) * x_j,  and every node adds its incoming messages:
      x_i <- x_i + sum_{j in N(i)} exp(-gamma_f * d(i, j)) * x_j
  so a node scores high when it is difficult AND lies in a dense region of difficult examples.

  Data selection by reverse message passing: repeat `size` times: select the unselected
  node k of highest score x_k, then lower each neighbour's score by the message the selected
  node sends back,
      x_j <- x_j - exp(-gamma_r * d(k, j)) * x_k      for all j in N(k)
  so the next picks avoid the selected node's neighbourhood (diversity).

These are the updates of the authors' code (core/data/sampling.py, GraphDensitySampler with
graph_mode='sum', graph_sampling_mode='weighted'): forward weight exp(-d) * s_j (their
gamma_f is fixed at 1: our default), reverse weight exp(-gamma * d) * x_k with their CIFAR
recipe's gamma = 0.1 (our gamma_r default) and k = 5 neighbours. Their CIFAR path builds the
kNN graph with scikit-learn and makes it symmetric (j in N(i) whenever i is among j's k
nearest or j among i's): `symmetric=True` (default) does the same; `symmetric=False` uses
the directed kNN lists (their precomputed-graph path: N(i) = the k nearest of i).
`hard_prune_fraction` first drops that fraction of the hardest examples, as their `--mis-ratio`
(their CIFAR recipe additionally balances classes and stratifies budgets as CCS; not done
here).

Not from the paper: ties. The greedy pick takes the lowest id among equal scores; neighbour
lists are ordered by (distance, id). The exact kNN runs on device: a jitted chunk function
gives each query's nearest candidates from the full pairwise squared-distance matrix of the
chunk (no loop over examples); their exact distances are then recomputed in float64 on the
host and re-ranked, so rounding in the f32 expansion ||a||^2 - 2ab + ||b||^2 cannot reorder
neighbours. The message passing and the greedy loop run in float64 numpy (the greedy loop is
sequential by definition: one argmax over N and k updates per selected example).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from datadiet_jax.prune.errors import SelectionError
from datadiet_jax.prune.moderate import validate_features
from datadiet_jax.prune.validate import (fraction_count, validate_fraction, validate_keep_count,
                                         validate_scores)
from datadiet_jax.prune.select import rank_descending

DEFAULT_NEIGHBORS = 5
DEFAULT_GAMMA_FORWARD = 1.0
DEFAULT_GAMMA_REVERSE = 0.1


def validate_d2_options(num_neighbors, gamma_forward, gamma_reverse) -> tuple[int, float, float]:
  """Checks k (an int >= 1) and gamma_f, gamma_r (finite floats > 0)."""
  if not isinstance(num_neighbors, (int, np.integer)) or isinstance(num_neighbors, bool) \
      or num_neighbors < 1:
    raise SelectionError(f"D2 needs num_neighbors k >= 1 (an int); got {num_neighbors!r}")
  for name, gamma in (("gamma_forward", gamma_forward), ("gamma_reverse", gamma_reverse)):
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)) \
        or not math.isfinite(gamma) or gamma <= 0:
      raise SelectionError(f"D2's {name} must be a finite number > 0 (the exp(-gamma * d) "
                           f"edge weight); got {gamma!r}")
  return int(num_neighbors), float(gamma_forward), float(gamma_reverse)


@functools.partial(jax.jit, static_argnames=("num",))
def _nearest_chunk(queries, query_ids, points, point_sq_norms, num: int):
  """i32[C, num]: ids of the `num` nearest points of each query (itself excluded), by
  squared distance; queries f32[C, D], query_ids i32[C], points f32[N, D]."""
  sq = (jnp.sum(queries * queries, axis=1)[:, None] - 2.0 * queries @ points.T
        + point_sq_norms[None, :])
  sq = jnp.where(jnp.arange(points.shape[0])[None, :] == query_ids[:, None], jnp.inf, sq)
  return jax.lax.top_k(-sq, num)[1]


def knn(features, num_neighbors: int, chunk_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Exact k nearest neighbours in Euclidean distance, self excluded.

  features: f*[N, D]; num_neighbors: k in [1, N - 1]
  -> (ids i32[N, k], distances f64[N, k]), each row ordered by (distance, id).
  """
  z = validate_features(features)
  n = z.shape[0]
  k, _, _ = validate_d2_options(num_neighbors, 1.0, 1.0)
  if k > n - 1:
    raise SelectionError(f"D2 with k = {k} neighbours needs more than {k} examples; got {n}")
  if int(chunk_size) < 1:
    raise SelectionError(f"chunk_size must be >= 1, got {chunk_size}")
  num = min(n - 1, 2 * k + 8)  # candidates re-ranked exactly on the host
  points = jnp.asarray(z, jnp.float32)
  sq_norms = jnp.sum(points * points, axis=1)
  size = min(int(chunk_size), n)
  neighbors, distances = [], []
  for start in range(0, n, size):  # a loop over chunks; the last one is padded
    stop = min(start + size, n)
    ids = np.minimum(np.arange(start, start + size), n - 1).astype(np.int32)
    out = _nearest_chunk(points[ids], jnp.asarray(ids), points, sq_norms, num)
    candidates = np.asarray(out)[:stop - start].astype(np.int64)       # i64[C, num]
    dist = np.linalg.norm(z[start:stop, None, :] - z[candidates], axis=2)  # f64[C, num]
    order = np.lexsort((candidates, dist), axis=1)[:, :k]               # by (distance, id)
    rows = np.arange(stop - start)[:, None]
    neighbors.append(candidates[rows, order])
    distances.append(dist[rows, order])
  return np.concatenate(neighbors).astype(np.int32), np.concatenate(distances)


def neighbor_graph(ids, distances, symmetric: bool = True):
  """The graph's edges as CSR: (offsets i64[N + 1], neighbours i64[E], distances f64[E]);
  node i's neighbours are neighbours[offsets[i]:offsets[i + 1]], ascending ids.
  symmetric: add j -> i for every kNN edge i -> j (duplicates merged)."""
  ids = np.asarray(ids, np.int64)
  n, k = ids.shape
  rows = np.repeat(np.arange(n), k)
  cols, dist = ids.reshape(-1), np.asarray(distances, np.float64).reshape(-1)
  if symmetric:
    rows, cols, dist = (np.concatenate([rows, cols]), np.concatenate([cols, rows]),
                        np.concatenate([dist, dist]))
  keys, first = np.unique(rows * n + cols, return_index=True)
  rows, cols, dist = keys // n, keys % n, dist[first]
  offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
  return offsets, cols, dist


def forward_message_passing(scores, graph, gamma_forward: float) -> np.ndarray:
  """f64[N]: x_i = s_i + sum_{j in N(i)} exp(-gamma_f d(i, j)) s_j."""
  offsets, cols, dist = graph
  scores = np.asarray(scores, np.float64)
  rows = np.repeat(np.arange(scores.shape[0]), np.diff(offsets))
  messages = np.exp(-gamma_forward * dist) * scores[cols]
  return scores + np.bincount(rows, weights=messages, minlength=scores.shape[0])


def reverse_message_passing_select(values, graph, size: int, gamma_reverse: float) -> np.ndarray:
  """i64[size]: the greedy picks in order: argmax of the unselected scores (lowest id among
  ties), then x_j -= exp(-gamma_r d(k, j)) x_k for each neighbour j of the pick k."""
  offsets, cols, dist = graph
  x = np.array(values, np.float64)
  weights = np.exp(-gamma_reverse * dist)
  picks = np.empty(size, np.int64)
  for t in range(size):
    k = int(np.argmax(x))
    picks[t] = k
    lo, hi = offsets[k], offsets[k + 1]
    x[cols[lo:hi]] -= weights[lo:hi] * x[k]
    x[k] = -np.inf
  return picks


def keep_d2(features, scores, size: int, num_neighbors: int = DEFAULT_NEIGHBORS,
            gamma_forward: float = DEFAULT_GAMMA_FORWARD,
            gamma_reverse: float = DEFAULT_GAMMA_REVERSE, symmetric: bool = True,
            hard_prune_fraction: float = 0.0, chunk_size: int = 512) -> np.ndarray:
  """D2 pruning: kNN graph of `features`, forward message passing of the difficulty
  `scores`, then `size` greedy picks with reverse message passing (module docstring).

  features: f*[N, D]; scores: f*[N] finite difficulty scores (higher = harder); size: int;
  num_neighbors: k >= 1; gamma_forward, gamma_reverse > 0; hard_prune_fraction in [0, 1):
  drop floor(N * fraction) hardest first (ties: lower ids dropped first)
  -> i32[size] sorted kept ids.
  """
  z = validate_features(features)
  n = z.shape[0]
  scores = validate_scores(scores, n, allow_inf=False).astype(np.float64)
  k, gamma_f, gamma_r = validate_d2_options(num_neighbors, gamma_forward, gamma_reverse)
  beta = validate_fraction(hard_prune_fraction, "hard_prune_fraction", allow_one=False)
  remaining = np.sort(rank_descending(scores)[fraction_count(n, beta):])
  size = validate_keep_count(size, remaining.size)
  ids, dist = knn(z[remaining], k, chunk_size)
  graph = neighbor_graph(ids, dist, symmetric)
  values = forward_message_passing(scores[remaining], graph, gamma_f)
  picks = reverse_message_passing_select(values, graph, size, gamma_r)
  return np.sort(remaining[picks]).astype(np.int32)
