"""Penultimate-layer features of a trained model: the input of its final classifier.

Moderate-DS and D2 pruning (datadiet_jax/prune/moderate.py, d2.py) work on the hidden
representation h(x) of a trained model f = g(h(x)), where g is the last (linear) layer
(Xia et al., ICLR 2023, Sec. 3 "Representation extraction"). Here h(x) is read from the
model's own forward pass, without a second copy of any architecture: the forward pass
runs under `flax.linen.intercept_methods`, and the interceptor records the input of the
final classifier `nn.Dense` (the module at `classifier_path(model)`), so

    logits == features @ kernel + bias      (of that Dense layer)

holds exactly for every model family:

  * ResNet18/50 (lowres), SimpleCNN / small CNN: the global-mean-pooled activations
    f32[B, C_last] (the input of `Dense_0`);
  * BertClassifier: the pooled [CLS] vector f32[B, H] (tanh(dense(hidden[:, 0])), the
    input of `head/classifier`, or `head/intent_classifier` for the joint head; eval mode,
    so dropout is the identity).

`features_fn` jits fn(stacked variables [R, ...], inputs, labels) -> f32[R, B, D] (members
vmapped, u8 images normalized on device), and `features_of_runs` applies it to a whole
dataset in fixed-size chunks with the score code's `apply_in_chunks` (one compilation,
the last chunk padded), returning f32[R, N, D].
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from datadiet_jax.data.normalize import normalize
from datadiet_jax.scores.ensemble import DEFAULT_BATCH_SIZE, apply_in_chunks
from datadiet_jax.scores.errors import ScoreError

_COMPILED: dict = {}


def classifier_path(model) -> tuple[str, ...]:
  """The module path of `model`'s final classifier Dense (whose input is the feature).

  ResNet / SimpleCNN: ('Dense_0',); BertClassifier: ('head', 'classifier'), or
  ('head', 'intent_classifier') with a joint intent + slot head. Raises ScoreError for a
  model family it does not know.
  """
  name = type(model).__name__
  if name in ("ResNet", "SimpleCNN"):
    return ("Dense_0",)
  if name == "BertClassifier":
    return ("head", "intent_classifier" if model.num_tags else "classifier")
  raise ScoreError(f"penultimate features of a {name} are not defined: features are read "
                   "for ResNet, SimpleCNN and BertClassifier models")


def penultimate_features(model, variables: dict, inputs) -> jax.Array:
  """f32[B, D]: the input of `model`'s final classifier in its eval-mode forward pass.

  variables: {'params', 'batch_stats'?} of one model; inputs: normalized images
  f32[B, H, W, C] or a text batch {'token_ids', 'attention_mask'} i32[B, L]. Traceable
  (jit/vmap it); the logits of the same pass are dropped.
  """
  return penultimate_features_and_logits(model, variables, inputs)[0]


def penultimate_features_and_logits(model, variables: dict, inputs):
  """(features f32[B, D], the model's outputs) of one eval-mode forward pass."""
  path = classifier_path(model)
  captured = []

  def capture(next_fun, args, kwargs, context):
    if (context.method_name == "__call__" and isinstance(context.module, nn.Dense)
        and tuple(context.module.path) == path):
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    outputs = model.apply(variables, inputs, train=False)
  if len(captured) != 1:
    raise ScoreError(f"the classifier {'/'.join(path)} of {type(model).__name__} was called "
                     f"{len(captured)} times in one forward pass (expected once)")
  return captured[0].astype(jnp.float32), outputs


def features_fn(model, mean=None, std=None) -> Callable:
  """Jitted fn(stacked_variables, inputs, labels) -> f32[R, B, D] (labels ignored; they
  keep the chunked-score signature of `apply_in_chunks`). u8 images are normalized with
  mean, std f32[C] (0..255 scale) on device. Cached per (model, mean, std)."""
  key = (repr(model), None if mean is None else np.asarray(mean).tobytes(),
         None if std is None else np.asarray(std).tobytes())
  if key in _COMPILED:
    return _COMPILED[key]

  def member(variables, inputs):
    return penultimate_features(model, variables, inputs)

  def fn(stacked_variables, inputs, labels):
    del labels
    if not isinstance(inputs, dict) and inputs.dtype == jnp.uint8:
      if mean is None or std is None:
        raise ScoreError("u8 images need the dataset's mean and std to be normalized")
      inputs = normalize(inputs, mean, std)
    return jax.vmap(member, in_axes=(0, None))(stacked_variables, inputs)

  if len(_COMPILED) > 16:
    _COMPILED.clear()
  _COMPILED[key] = jax.jit(fn)
  return _COMPILED[key]


def features_of_runs(model, stacked_variables, inputs, mean=None, std=None,
                     batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> np.ndarray:
  """f32[R, N, D]: the penultimate features of all N examples under each of R models.

  stacked_variables: variables with a leading member axis [R, ...] (scores.checkpoints.
  load_stacked_variables); inputs: u8[N, H, W, C] images (with mean, std) or normalized
  floats, or a text dataset's train_inputs() (dicts of i32[N, L]).
  """
  if int(batch_size) < 1:
    raise ScoreError(f"batch_size must be positive, got {batch_size}")
  inputs = inputs if getattr(inputs, "reads_on_index", False) else \
      jax.tree_util.tree_map(np.asarray, inputs)
  n = int(jax.tree_util.tree_leaves(inputs)[0].shape[0])
  if n == 0:
    raise ScoreError("no examples to compute features of (the inputs are empty)")
  dummy_labels = np.zeros((n,), np.int32)
  return apply_in_chunks(features_fn(model, mean, std), stacked_variables, inputs,
                         dummy_labels, batch_size, progress, desc="features")
