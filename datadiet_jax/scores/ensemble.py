"""Scores of an ensemble of models (R runs or R random inits) over a whole dataset.

`score_ensemble` builds ONE jitted function of (stacked variables, chunk of images,
chunk of labels) -> f32[R, B]: it normalizes u8 images on device, then applies the score
to every member (the members are a leading axis of the stacked variables). It is
compiled once and applied to the dataset in fixed-size chunks (the last chunk is padded
with copies of its first example and the padding is dropped), with a tqdm progress bar.
Host work overlaps device work: chunk i+1 is dispatched before chunk i is read back.

Members are vmapped for the forward-only scores (EL2N, margins, ...) and for GraNd by ghost
norms (the default, grand_ghost.py: no per-example gradients, memory O(B x activations)).
For GraNd by vmap(grad) (`grand_method="vmap"`, or a model the ghost method falls back on)
they are mapped *sequentially* with `jax.lax.map` inside the same jit when all members'
per-example gradients would not fit GRAD_VMAP_BUDGET_BYTES, so only one member's
per-example gradients are alive at a time.

Memory of GraNd by vmap(grad) (default chunk `DEFAULT_BATCH_SIZE = 128`, float32; worst
case ResNet18 with 64 filters, R = 10 members, N = 50,000 CIFAR-10 examples, on CPU):

* one example's gradient is 11,173,962 params x 4 B = 44.7 MB, so one member's
  per-example gradients for a chunk are 128 x 44.7 MB = 5.7 GB (an upper bound: XLA can
  reduce a layer's gradients to squared norms as soon as they are produced);
* the saved activations and cotangents of 128 examples through ResNet18 are < 1.5 GB;
* the R = 10 stacked variables are 10 x 44.7 MB = 0.45 GB (params + BN stats);
* the dataset stays on the host (u8, 150 MB); the outputs are R x N f32 = 2 MB.

Total < 8 GB, well inside 24 GiB. XLA's own buffer assignment for the compiled chunk
function (jax 0.10 CPU, ResNet18-64, GraNd, chunk 128) is 3.4 GB of temporaries, the same
for R = 2 and R = 10, plus 0.45 GB of arguments for R = 10 (checked by
tests/test_scores.py::test_default_chunk_fits_memory). Vmapping the 10 members as well
would multiply the gradient buffers by 10 (57 GB bound), hence the sequential map. The
forward-only scores vmap the members: 2.1 GB of temporaries for R = 10, chunk 128.
GraNd by ghost norms (the default) keeps no per-example gradients: 0.90 GiB of
temporaries per member for ResNet18-64 and chunk 128 (a plain fwd+bwd of the chunk: 0.87),
so its members are vmapped; R = 10 is checked by test_default_chunk_fits_memory.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from datadiet_jax.data.normalize import normalize
from datadiet_jax.scores._common import ApplyFn, eval_apply_fn
from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.scores.grand_ghost import make_plan
from datadiet_jax.scores.registry import DEFAULT_GRAND_METHOD, GRADIENT_SCORES, get_score_fn
from datadiet_jax.train.state import dummy_inputs, with_pretrained

DEFAULT_BATCH_SIZE = 128
# Above this many bytes of per-example gradients (all members of a chunk), GraNd maps the
# members sequentially (see make_ensemble_score_fn).
GRAD_VMAP_BUDGET_BYTES = 4 * 2**30


def num_members(stacked_variables) -> int:
  """R, the shared leading axis of every leaf of `stacked_variables`."""
  sizes = {np.shape(x)[0] if np.ndim(x) else None
           for x in jax.tree_util.tree_leaves(stacked_variables)}
  if len(sizes) != 1 or None in sizes:
    raise ScoreError(f"stacked variables need one shared leading ensemble axis; found leading "
                     f"sizes {sorted(str(s) for s in sizes)} (use train.ensemble.stack_trees)")
  return sizes.pop()


def make_ensemble_score_fn(score_name: str, apply_fn: ApplyFn, mean=None, std=None,
                           sequential_members: Optional[bool] = None,
                           grand_method: str = DEFAULT_GRAND_METHOD) -> Callable:
  """Returns jitted fn(stacked_variables, images, labels) -> f32[R, B].

  images: u8[B, H, W, C] (normalized inside with mean/std, 0..255 scale) or an already
  normalized float array, or text inputs {'token_ids', 'attention_mask'} i32[B, L];
  labels: i32[B] (or {'intent', 'slots'} of joint data). sequential_members: map the R
  members with lax.map instead of vmap. Default (None): vmap, except for GraNd by vmap(grad) (the "vmap"
  method, or a model the ghost method falls back on) whose per-example gradients for all
  members at once, R x B x params x 4 bytes, would exceed GRAD_VMAP_BUDGET_BYTES (decided
  at trace time from the shapes). lax.map bounds memory but runs ~3-4x slower on CPU
  (measured: SimpleCNN, B = 128: 3.3 s vs 0.9 s per member and chunk), so small models vmap
  the members too. grand_method: "ghost" (default) or "vmap", see registry.py.
  """
  score_fn = get_score_fn(score_name, grand_method)

  def is_sequential(stacked_variables, images) -> bool:
    if sequential_members is not None:
      return sequential_members
    if score_name not in GRADIENT_SCORES:
      return False
    member = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                                    stacked_variables)
    if (score_name == "grand" and grand_method == "ghost"
        and make_plan(apply_fn, member, images).unsupported is None):
      return False  # no per-example gradients: memory O(B x activations) per member
    batch = _num_rows(images)
    params = stacked_variables["params"]
    grad_bytes = 4 * batch * sum(x.size for x in jax.tree_util.tree_leaves(params))
    return grad_bytes > GRAD_VMAP_BUDGET_BYTES

  def member_scores(variables, images, labels):
    return score_fn(apply_fn, variables, images, labels).astype(jnp.float32)

  def ensemble_scores(stacked_variables, images, labels):
    if not isinstance(images, dict) and images.dtype == jnp.uint8:
      if mean is None or std is None:
        raise ScoreError("u8 images need the dataset's mean and std to be normalized; pass "
                         "mean=..., std=... (0..255 scale) or already normalized float images")
      images = normalize(images, mean, std)
    if is_sequential(stacked_variables, images):
      return jax.lax.map(lambda v: member_scores(v, images, labels), stacked_variables)
    return jax.vmap(member_scores, in_axes=(0, None, None))(stacked_variables, images, labels)

  return jax.jit(ensemble_scores)


def _num_rows(tree) -> int:
  return int(jax.tree_util.tree_leaves(tree)[0].shape[0])


def _chunk(tree, start: int, stop: int, size: int):
  """Rows [start, stop) of every array of `tree`, padded to `size` rows with row `start`."""
  idx = np.arange(start, start + size)
  idx[stop - start:] = start
  return jax.tree_util.tree_map(lambda array: array[idx], tree)


def apply_in_chunks(fn: Callable, stacked_variables, images: np.ndarray, labels: np.ndarray,
                    batch_size: int, progress: bool = True, desc: str = "scores",
                    exact_batch: bool = False) -> np.ndarray:
  """Runs fn(stacked_variables, images chunk, labels chunk) -> [R, B] over all N examples.

  Every call has the same shapes (the last chunk is padded), so `fn` compiles once. Chunks
  have min(batch_size, N) rows; exact_batch: batch_size rows even when N is smaller (a
  shard of a larger set then scores each example in the very batch shape, and so to the
  very bits, of one pass over the whole set). Returns f32[R, N] on the host.
  """
  n = _num_rows(images)
  size = max(1, int(batch_size) if exact_batch else min(int(batch_size), n))
  outputs, pending = [], None
  with tqdm(total=n, desc=desc, unit="ex", disable=not progress, dynamic_ncols=True) as bar:
    for start in range(0, n, size):
      stop = min(start + size, n)
      result = fn(stacked_variables, _chunk(images, start, stop, size),
                  _chunk(labels, start, stop, size))
      if pending is not None:  # read the previous chunk back while this one runs
        outputs.append(np.asarray(pending[0])[:, :pending[1]])
        bar.update(pending[1])
      pending = (result, stop - start)
    if pending is not None:
      outputs.append(np.asarray(pending[0])[:, :pending[1]])
      bar.update(pending[1])
  return np.concatenate(outputs, axis=1).astype(np.float32)


def _check_text_inputs(inputs: dict, labels, batch_size):
  inputs = {k: np.asarray(v) for k, v in inputs.items()}
  labels = jax.tree_util.tree_map(lambda x: np.asarray(x, np.int32), labels)
  rows = {k: v.shape[0] if v.ndim else None for k, v in inputs.items()}
  label_rows = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree_util.tree_leaves(labels)}
  if len(set(rows.values()) | label_rows) != 1 or None in label_rows:
    raise ScoreError(f"text inputs and labels must share their first axis (examples), got "
                     f"inputs {rows} and labels of {sorted(map(str, label_rows))} rows")
  if not next(iter(label_rows)):
    raise ScoreError("no examples to score (the inputs are empty)")
  if int(batch_size) <= 0:
    raise ScoreError(f"batch_size must be positive, got {batch_size}")
  return inputs, labels


def _is_lazy(images) -> bool:
  """Whether `images` is an array-like read on indexing (data.records.LazyRows)."""
  return bool(getattr(images, "reads_on_index", False))


def _check_inputs(images, labels, mean, std, batch_size):
  if isinstance(images, dict):
    return _check_text_inputs(images, labels, batch_size)
  if not _is_lazy(images):  # a records data set's LazyRows is read chunk by chunk
    images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4:
    raise ScoreError(f"images must be [N, H, W, C], got shape {list(images.shape)}")
  if labels.shape != (len(images),):
    raise ScoreError(f"labels must be i32[{len(images)}] to match the images, got shape "
                     f"{list(labels.shape)}")
  if len(images) == 0:
    raise ScoreError("no examples to score (images is empty)")
  if images.dtype == np.uint8 and (mean is None or std is None):
    raise ScoreError("u8 images need the dataset's mean and std to be normalized; pass "
                     "mean=..., std=... (0..255 scale) or already normalized float images")
  if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
    raise ScoreError(f"images must be u8 or normalized float, got {images.dtype}")
  if int(batch_size) <= 0:
    raise ScoreError(f"batch_size must be positive, got {batch_size}")
  return images, labels.astype(np.int32)


def score_ensemble(score_name: str, apply_fn: ApplyFn, stacked_variables,
                   images, labels, batch_size: int = DEFAULT_BATCH_SIZE, mean=None, std=None,
                   progress: bool = True, grand_method: str = DEFAULT_GRAND_METHOD,
                   exact_batch: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Scores N examples under R models whose variables are stacked on a leading axis.

  Args:
    score_name: one of registry.SCORE_NAMES.
    apply_fn: eval-mode model, `eval_apply_fn(model)`.
    stacked_variables: {'params', 'batch_stats'?} with leaves [R, ...].
    images: u8[N, H, W, C] (normalized on device with mean/std) or normalized f32[N, H, W, C];
      or text inputs {'token_ids', 'attention_mask'} i32[N, L].
    labels: i32[N] (or {'intent': i32[N], 'slots': i32[N, L]}).
    batch_size: examples per compiled call (see the module docstring for memory).
    mean, std: f32[C] on the 0..255 scale; needed for u8 images, ignored otherwise.
    progress: show a tqdm bar with rate and ETA.
    grand_method: "ghost" (default) or "vmap": how GraNd is computed (registry.py).
    exact_batch: every compiled call has batch_size rows, even when N is smaller
      (apply_in_chunks).

  Returns:
    (mean f32[N], std f32[N] (population std over members, 0 for R = 1),
     per_member f32[R, N]).
  """
  images, labels = _check_inputs(images, labels, mean, std, batch_size)
  num_members(stacked_variables)
  fn = make_ensemble_score_fn(score_name, apply_fn, mean, std, grand_method=grand_method)
  per_member = apply_in_chunks(fn, stacked_variables, images, labels, batch_size, progress,
                               desc=score_name, exact_batch=exact_batch)
  return per_member.mean(0), per_member.std(0), per_member


def _as_keys(seeds_or_keys) -> jax.Array:
  """int seeds [R] or PRNG keys (u32[R, 2] or a typed key array [R]) -> keys [R, ...]."""
  if isinstance(seeds_or_keys, jax.Array) and jax.dtypes.issubdtype(seeds_or_keys.dtype,
                                                                    jax.dtypes.prng_key):
    return seeds_or_keys
  arr = np.asarray(seeds_or_keys)
  if arr.ndim == 2 and arr.dtype == np.uint32:
    return jnp.asarray(arr)
  if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or len(arr) == 0:
    raise ScoreError(f"expected a non-empty list of int seeds or PRNG keys [R, 2], got "
                     f"{arr.dtype}{list(arr.shape)}")
  if arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max:
    raise ScoreError("seeds must fit in int32 (as jax.random.PRNGKey sees them without x64)")
  return jax.vmap(jax.random.PRNGKey)(jnp.asarray(arr, jnp.int32))


def init_stacked_variables(model, seeds_or_keys: Union[Sequence[int], jax.Array],
                           image_shape: Sequence[int]) -> dict:
  """R initialisations of `model` in one jitted vmap of `model.init` over the keys.

  image_shape: the data set's input_spec (image shape, or a text input spec).
  Member r equals `train.state.init_variables(model, seeds[r], image_shape)` (a model
  with a pretrained_dir gets the checkpoint's encoder in every member).
  Returns {'params', 'batch_stats'?} with leaves [R, ...].
  """
  spec = tuple(image_shape)
  if not (spec and isinstance(spec[0], tuple)):
    spec = tuple(int(d) for d in spec)
  return with_pretrained(model, _vmapped_init(model, spec)(_as_keys(seeds_or_keys)))


@functools.lru_cache(maxsize=16)
def _vmapped_init(model, image_shape: tuple) -> Callable:
  """jit(vmap(model.init)) over keys, cached per (model, input spec): compiled once."""
  dummy = dummy_inputs(image_shape)
  return jax.jit(jax.vmap(lambda key: model.init(key, dummy, train=False)))


def grand_at_init(model, seeds_or_keys, images, labels, batch_size: int = DEFAULT_BATCH_SIZE,
                  mean=None, std=None, progress: bool = True,
                  method: str = DEFAULT_GRAND_METHOD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """GraNd at initialisation averaged over R random inits (one per seed or key).

  images: u8[N, H, W, C] (with mean/std) or normalized f32; labels: i32[N].
  method: "ghost" (default, one backward pass) or "vmap" (vmap(grad)); same values.
  Returns (mean f32[N], std f32[N], per_member f32[R, N]) as `score_ensemble`.
  """
  images, labels = _check_inputs(images, labels, mean, std, batch_size)
  spec = (tuple((k, v.shape[1:], str(v.dtype)) for k, v in sorted(images.items()))
          if isinstance(images, dict) else images.shape[1:])
  stacked = init_stacked_variables(model, seeds_or_keys, spec)
  return score_ensemble("grand", eval_apply_fn(model), stacked, images, labels, batch_size,
                        mean, std, progress, grand_method=method)
