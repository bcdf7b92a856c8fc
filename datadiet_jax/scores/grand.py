"""GraNd (Paul et al. 2021): the gradient norm of the per-example loss,

  grand(x, y) = || d CE(f(x; theta), y) / d theta ||_2

over ALL trainable parameters theta = variables['params'] (BatchNorm running statistics
are state, not parameters, and are held fixed). The model is in eval mode, so examples
are independent and the per-example gradient is exact.

Two implementations with the same result:

* `grand`: `jax.vmap(jax.grad(loss of one example))` over the batch. Peak memory is
  B per-example gradients (B x num_params floats) plus the activations of B examples.
* `grand_head`: the same over the classifier head's parameters only (params['head'] of
  the BERT models; "BERT on a Data Diet" used this variant).
* `grand_jacrev`: the original code's method, `jax.jacrev` of the vector of B
  per-example losses of one batched forward pass. It runs one backward pass per
  example through the whole batch (~B times the work), so it is for cross-checks and
  the benchmark only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datadiet_jax.scores._common import ApplyFn
from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.scores.loss import cross_entropy
from datadiet_jax.train.tasks import per_example_loss


def _split_params(variables) -> tuple[dict, dict]:
  """variables -> (params, the other collections, e.g. {'batch_stats': ...})."""
  variables = dict(variables)
  if "params" not in variables:
    raise ScoreError(f"variables have no 'params' collection (found {sorted(variables)}); "
                     "pass the model's {'params', 'batch_stats'?} dict")
  params = variables.pop("params")
  return params, variables


def per_example_sq_norms(grads, batch_size: int) -> jax.Array:
  """A gradient pytree whose leaves are f32[B, ...] -> f32[B] squared L2 norms over all leaves."""
  leaves = jax.tree_util.tree_leaves(grads)
  return sum(jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(batch_size, -1), axis=-1)
             for g in leaves)


def _batch_size(tree) -> int:
  return jax.tree_util.tree_leaves(tree)[0].shape[0]


def per_example_grads(apply_fn: ApplyFn, variables, images, labels, head_only: bool = False):
  """Per-example loss gradients w.r.t. variables['params'] (or only params['head']):
  a pytree of f32[B, ...]. images/labels may be pytrees (text inputs, joint labels); the
  loss is train.tasks.per_example_loss (CE, or the joint loss)."""
  params, rest = _split_params(variables)
  if head_only:
    if "head" not in params:
      raise ScoreError(f"grand_head needs a model whose classifier is params['head'] (the "
                       f"BERT models); this one has {sorted(params)}")
    head, body = params["head"], {k: v for k, v in params.items() if k != "head"}
    full = lambda h: {**body, "head": h}
  else:
    head, full = params, lambda p: p
  add_batch = lambda tree: jax.tree_util.tree_map(lambda x: x[None], tree)

  def example_loss(p, image, label):
    outputs = apply_fn({**rest, "params": full(p)}, add_batch(image))
    return per_example_loss(outputs, add_batch(label))[0]

  return jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(head, images, labels)


def grand(apply_fn: ApplyFn, variables, images, labels) -> jax.Array:
  """GraNd via vmap(grad). images: f32[B, H, W, C] normalized (or text inputs); labels:
  i32[B] (or {'intent', 'slots'}) -> f32[B]."""
  grads = per_example_grads(apply_fn, variables, images, labels)
  return jnp.sqrt(per_example_sq_norms(grads, _batch_size(labels)))


def grand_head(apply_fn: ApplyFn, variables, inputs, labels) -> jax.Array:
  """GraNd over the classifier head's parameters only (params['head']) -> f32[B]."""
  grads = per_example_grads(apply_fn, variables, inputs, labels, head_only=True)
  return jnp.sqrt(per_example_sq_norms(grads, _batch_size(labels)))


def grand_jacrev(apply_fn: ApplyFn, variables, images: jax.Array,
                 labels: jax.Array) -> jax.Array:
  """GraNd via jacrev of the batched per-example losses (the original's method) -> f32[B]."""
  params, rest = _split_params(variables)

  def batch_losses(p):
    return cross_entropy(apply_fn({**rest, "params": p}, images), labels)

  jacobian = jax.jacrev(batch_losses)(params)
  return jnp.sqrt(per_example_sq_norms(jacobian, images.shape[0]))
