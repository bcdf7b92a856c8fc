"""Pure train and eval steps.

`make_train_step` / `make_eval_step` close over the model, optimizer and *task*
(train/tasks.py: what the model gets from a batch, and the per-example loss) and return
pure functions of (state, batch). They have no Python side effects, so they can be
jitted, vmapped over a leading ensemble axis (several seeds in one compiled step), or
run under jax.sharding data parallelism unchanged.

A batch is a dict with example_ids i32[B] and the task's keys: images u8[B, H, W, C] and
labels i32[B] for images; inputs {token_ids, attention_mask} and labels (i32[B] or
{intent, slots}) for text. The step's randomness is a pure function of the state:
step_key = fold_in(state.key, state.step) drives augmentation, and fold_in(step_key, 1)
the model's dropout, so a resumed run repeats exactly.

Optionally weights f32[B]: per-example loss weights (soft pruning, InfoBatch). The
objective is then mean_b(weights_b * loss_b), averaged over the batch size B as InfoBatch
does; without `weights` it is mean_b(loss_b), the same computation as before weights
existed (all-ones weights give bit-identical updates, tests/test_dynamic.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from datadiet_jax.train import tasks as tasks_lib
from datadiet_jax.train.state import TrainState, model_variables


def _image_task(mean, std, augment: bool, task):
  if task is not None:
    return task
  return tasks_lib.ImageClassification(tuple(float(m) for m in mean),
                                       tuple(float(s) for s in std), augment)


def make_train_step(model, tx: optax.GradientTransformation, mean=None, std=None,
                    augment: bool = True, task=None) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics).

  task: a train.tasks task; None = image classification with mean/std/augment.
  metrics: loss f32[] (batch mean of the per-example loss, unweighted), accuracy f32[], correct
  bool[B] and per_example_loss f32[B] (from the outputs of this step, before the update),
  example_ids i32[B], and the sequence-level logits f32[B, C] and labels i32[B], so
  forgetting and the training-dynamics scores (train/dynamics.py) can be tracked outside
  the step.
  """
  task = _image_task(mean, std, augment, task)

  def train_step(state: TrainState, batch: dict):
    step_key = jax.random.fold_in(state.key, state.step)
    inputs = task.model_inputs(batch, step_key, train=True)
    labels = batch["labels"]
    rngs = {"dropout": jax.random.fold_in(step_key, 1)}

    def loss_fn(params):
      variables = {**model_variables(state), "params": params}
      if state.batch_stats:
        outputs, updates = model.apply(variables, inputs, train=True, mutable=["batch_stats"],
                                       rngs=rngs)
        batch_stats = updates["batch_stats"]
      else:
        outputs = model.apply(variables, inputs, train=True, rngs=rngs)
        batch_stats = state.batch_stats
      per_example = tasks_lib.per_example_loss(outputs, labels)
      objective = per_example.mean() if weights is None else (per_example * weights).mean()
      return objective, (outputs, batch_stats, per_example)

    weights = batch.get("weights")
    (_, (outputs, batch_stats, per_example)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    correct = tasks_lib.correct(outputs, labels)
    metrics = {"loss": per_example.mean(), "accuracy": correct.mean(), "correct": correct,
               "per_example_loss": per_example, "example_ids": batch["example_ids"],
               "logits": tasks_lib.sequence_logits(outputs),
               "labels": tasks_lib.sequence_labels(labels)}
    return new_state, metrics

  return train_step


def make_eval_step(model, mean=None, std=None, task=None) -> Callable:
  """Returns eval_step(state, batch) -> {loss_sum, correct_sum, count} over batch['mask'].

  The mask (bool[B]) lets a short final batch be padded to the compiled size.
  BatchNorm uses its running statistics; dropout is off. For the joint task the result
  also has slot_predictions i32[B, L] (argmax tag per token) for span F1 on the host.
  """
  task = _image_task(mean, std, False, task)

  def eval_step(state: TrainState, batch: dict):
    inputs = task.model_inputs(batch, jax.random.PRNGKey(0), train=False)
    outputs = model.apply(model_variables(state), inputs, train=False)
    per_example = tasks_lib.per_example_loss(outputs, batch["labels"])
    correct = tasks_lib.correct(outputs, batch["labels"])
    mask = batch["mask"]
    out = {"loss_sum": jnp.sum(per_example * mask), "correct_sum": jnp.sum(correct & mask),
           "count": jnp.sum(mask)}
    if isinstance(outputs, dict):
      out["slot_predictions"] = jnp.argmax(outputs["slots"], -1).astype(jnp.int32)
    return out

  return eval_step
