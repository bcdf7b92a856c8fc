"""Pure train and eval steps.

`make_train_step` / `make_eval_step` close over the model, optimizer and normalization
constants and return pure functions of (state, batch). They have no Python side
effects, so they can be jitted, vmapped over a leading ensemble axis (several seeds in
one compiled step), or run under jax.sharding data parallelism unchanged.

A batch is a dict: images u8[B, H, W, C], labels i32[B], example_ids i32[B], and
optionally weights f32[B]: per-example loss weights (soft pruning, InfoBatch). The
objective is then mean_b(weights_b * loss_b), averaged over the batch size B as InfoBatch
does; without `weights` it is mean_b(loss_b), the same computation as before weights
existed (all-ones weights give bit-identical updates, tests/test_dynamic.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from datadiet_jax.data.augment import pad_crop_flip
from datadiet_jax.data.normalize import normalize
from datadiet_jax.train.state import TrainState, model_variables


def make_train_step(model, tx: optax.GradientTransformation, mean, std,
                    augment: bool = True) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics).

  metrics: loss f32[] (batch mean CE, unweighted), accuracy f32[], correct bool[B] and
  per_example_loss f32[B] (from the logits of this step, before the update) and
  example_ids i32[B], so forgetting can be tracked outside the step.
  """

  def train_step(state: TrainState, batch: dict):
    images = normalize(batch["images"], mean, std)
    if augment:
      images = pad_crop_flip(jax.random.fold_in(state.key, state.step), images)
    labels = batch["labels"]

    def loss_fn(params):
      variables = {**model_variables(state), "params": params}
      if state.batch_stats:
        logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
      else:
        logits, batch_stats = model.apply(variables, images, train=True), state.batch_stats
      per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      objective = per_example.mean() if weights is None else (per_example * weights).mean()
      return objective, (logits, batch_stats, per_example)

    weights = batch.get("weights")
    (_, (logits, batch_stats, per_example)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    correct = jnp.argmax(logits, -1) == labels
    metrics = {"loss": per_example.mean(), "accuracy": correct.mean(), "correct": correct,
               "per_example_loss": per_example, "example_ids": batch["example_ids"]}
    return new_state, metrics

  return train_step


def make_eval_step(model, mean, std) -> Callable:
  """Returns eval_step(state, batch) -> {loss_sum, correct_sum, count} over batch['mask'].

  The mask (bool[B]) lets a short final batch be padded to the compiled size.
  BatchNorm uses its running statistics.
  """

  def eval_step(state: TrainState, batch: dict):
    images = normalize(batch["images"], mean, std)
    logits = model.apply(model_variables(state), images, train=False)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = jnp.argmax(logits, -1) == batch["labels"]
    mask = batch["mask"]
    return {"loss_sum": jnp.sum(per_example * mask), "correct_sum": jnp.sum(correct & mask),
            "count": jnp.sum(mask)}

  return eval_step
