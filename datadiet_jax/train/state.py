"""The training state: a pytree of arrays only (no functions), so it can be vmapped over
an ensemble axis, sharded, and checkpointed as is."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: i32[] number of updates applied (0 = initialisation).
    params: trainable parameters.
    batch_stats: BatchNorm running statistics ({} for models without BatchNorm).
    opt_state: optax state (momentum buffers, step count).
    key: u32[2] the run's data PRNG key; augmentation at step t uses fold_in(key, t).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array


_JITTED_INIT: dict = {}


def dummy_inputs(input_spec):
  """Zero model inputs of batch 1 for `model.init`.

  input_spec: an image shape (H, W, C) -> f32[1, H, W, C]; or ((name, shape, dtype), ...)
  (a TextDataset's `input_spec`) -> {name: zeros [1, *shape] of dtype}.
  """
  spec = tuple(input_spec)
  if spec and isinstance(spec[0], tuple):
    return {name: np.zeros((1, *shape), dtype) for name, shape, dtype in spec}
  return np.zeros((1, *spec), np.float32)


def with_pretrained(model, variables: dict) -> dict:
  """Replaces the encoder of a model with a `pretrained_dir` by the checkpoint's weights
  (models/pretrained.py); other models are returned unchanged."""
  directory = getattr(model, "pretrained_dir", None)
  if not directory:
    return variables
  from datadiet_jax.models.pretrained import with_pretrained_encoder  # pylint: disable=g-import-not-at-top
  return with_pretrained_encoder(variables, directory)


def init_variables(model, model_seed: int, image_shape) -> dict:
  """Initial {'params', 'batch_stats'?} of `model` from PRNGKey(model_seed).

  image_shape: the data set's `input_spec` (an image shape, or a text input spec; see
  `dummy_inputs`). A model with a `pretrained_dir` gets the checkpoint's encoder.
  The jitted init is cached per (model, input spec), so the runs of a sweep (and every
  resume or restore) compile it once instead of once per call.
  """
  spec = tuple(image_shape)
  key = (repr(model), spec)
  if key not in _JITTED_INIT:
    if len(_JITTED_INIT) > 32:
      _JITTED_INIT.clear()
    dummy = dummy_inputs(spec)  # numpy, not a tracer, even under eval_shape
    _JITTED_INIT[key] = jax.jit(lambda k: model.init(k, dummy, train=False))
  return with_pretrained(model, _JITTED_INIT[key](jax.random.PRNGKey(model_seed)))


def create_train_state(model, tx: optax.GradientTransformation, model_seed: int,
                       data_seed: int, image_shape) -> TrainState:
  """A fresh state: params from `model_seed`, step keys from `data_seed`.

  image_shape: the data set's `input_spec` (see `init_variables`)."""
  variables = init_variables(model, model_seed, image_shape)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    key=jax.random.PRNGKey(data_seed))


def model_variables(state: TrainState) -> dict:
  """The flax variables dict {'params', 'batch_stats'?} for `model.apply`."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def num_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
