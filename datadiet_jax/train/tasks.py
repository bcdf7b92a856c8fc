"""Tasks: what a batch feeds the model, and the per-example loss and correctness of its
outputs. The train/eval steps, the loop and the scores are written once against this
interface; a modality is a data source + a model + a task.

  ImageClassification     batch {'images': u8[B, H, W, C], 'labels': i32[B]}; the model
                          gets normalized (train: augmented) images; logits f32[B, C].
  SequenceClassification  batch {'inputs': {'token_ids', 'attention_mask'}, 'labels': i32[B]};
                          logits f32[B, C].
  JointIntentSlot         batch {'inputs': ..., 'labels': {'intent': i32[B],
                          'slots': i32[B, L] (IGNORE_ID = unlabelled)}}; outputs
                          {'intent': f32[B, C], 'slots': f32[B, L, S]}.

Per-example loss: CE for classification; for the joint task
  loss_i = CE(intent_i) + (1 / T_i) sum_{t labelled} CE(slot_{i,t})
(T_i = labelled tokens of example i; padding, special tokens and non-first sub-tokens are
never labelled, so they never contribute). The batch loss is the mean over examples.
"Correct" (accuracy, forgetting events) is the sequence label / intent.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from datadiet_jax.data.augment import pad_crop_flip
from datadiet_jax.data.normalize import normalize

IGNORE_ID = -100


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits f32[..., C], labels i32[...] -> f32[...] = -log softmax(logits)[label]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def token_mask(slot_labels: jax.Array) -> jax.Array:
  """bool[B, L]: the labelled tokens (slot label != IGNORE_ID)."""
  return slot_labels != IGNORE_ID


def masked_slot_ce(slot_logits: jax.Array, slot_labels: jax.Array) -> jax.Array:
  """f32[B, L] per-token CE, 0 at unlabelled tokens."""
  mask = token_mask(slot_labels)
  return jnp.where(mask, cross_entropy(slot_logits, jnp.where(mask, slot_labels, 0)), 0.0)


def joint_loss(outputs: dict, labels: dict) -> jax.Array:
  """f32[B]: CE(intent) + mean CE over each example's labelled tokens (0 if none)."""
  per_token = masked_slot_ce(outputs["slots"], labels["slots"])
  count = jnp.sum(token_mask(labels["slots"]), axis=-1)
  slot = jnp.sum(per_token, axis=-1) / jnp.maximum(count, 1)
  return cross_entropy(outputs["intent"], labels["intent"]) + slot


def per_example_loss(outputs, labels) -> jax.Array:
  """f32[B]: CE of logits, or the joint loss of {'intent', 'slots'} outputs."""
  if isinstance(outputs, dict):
    return joint_loss(outputs, labels)
  return cross_entropy(outputs, labels)


def sequence_logits(outputs) -> jax.Array:
  """The sequence-level logits f32[B, C]: the logits, or the intent logits."""
  return outputs["intent"] if isinstance(outputs, dict) else outputs


def sequence_labels(labels) -> jax.Array:
  return labels["intent"] if isinstance(labels, dict) else labels


def correct(outputs, labels) -> jax.Array:
  """bool[B]: argmax of the sequence logits equals the sequence label."""
  return jnp.argmax(sequence_logits(outputs), -1) == sequence_labels(labels)


@dataclasses.dataclass(frozen=True)
class ImageClassification:
  """mean, std: per-channel constants on the 0..255 scale (tuples, so the task hashes)."""

  mean: tuple
  std: tuple
  augment: bool = True

  def model_inputs(self, batch: dict, key: jax.Array, train: bool):
    images = normalize(batch["images"], jnp.asarray(self.mean), jnp.asarray(self.std))
    if train and self.augment:
      images = pad_crop_flip(key, images)
    return images


@dataclasses.dataclass(frozen=True)
class SequenceClassification:
  """Text: the model gets batch['inputs'] unchanged (dropout is the model's own)."""

  def model_inputs(self, batch: dict, key: jax.Array, train: bool):
    del key, train
    return batch["inputs"]


@dataclasses.dataclass(frozen=True)
class JointIntentSlot(SequenceClassification):
  """Joint intent + slot classification; the eval step also returns slot predictions."""


def task_for(dataset, augment: bool = True):
  """The task of a data set: images, sentence classification or joint intent+slot."""
  if hasattr(dataset, "train_images"):
    return ImageClassification(tuple(float(m) for m in dataset.mean),
                               tuple(float(s) for s in dataset.std), augment)
  return JointIntentSlot() if dataset.has_token_labels else SequenceClassification()
