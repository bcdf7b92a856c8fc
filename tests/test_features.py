"""Penultimate features (scores/features.py) of every model family, against hand forward
passes: logits == features @ W + b of the final Dense; SimpleCNN features == a lax.conv
forward pass written out here; BERT features == tanh(pooler(hidden[:, 0]))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datadiet_jax.models import get_model, get_text_model
from datadiet_jax.models.bert import BertConfig
from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.scores.features import (classifier_path, features_of_runs,
                                          penultimate_features,
                                          penultimate_features_and_logits)
from datadiet_jax.train.ensemble import stack_trees


def _perturbed(variables, seed):
  """Random non-trivial values for every leaf (BatchNorm variances kept positive)."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  rng = np.random.RandomState(seed)
  out = []
  for path, leaf in leaves:
    value = rng.normal(0, 0.3, leaf.shape).astype(np.float32)
    if "var" in jax.tree_util.keystr(path):
      value = np.abs(value) + 0.5
    out.append(jnp.asarray(value))
  return jax.tree_util.tree_unflatten(tree, out)


def _check_logits(model, variables, inputs, path):
  features, logits = penultimate_features_and_logits(model, variables, inputs)
  dense = variables["params"]
  for name in path:
    dense = dense[name]
  by_hand = np.asarray(features, np.float64) @ np.asarray(dense["kernel"], np.float64) \
      + np.asarray(dense["bias"], np.float64)
  logits = logits["intent"] if isinstance(logits, dict) else logits
  np.testing.assert_allclose(np.asarray(logits), by_hand, rtol=1e-5, atol=1e-5)
  return np.asarray(features)


def test_simple_cnn_features_equal_a_hand_forward_pass():
  model = get_model("small_cnn", 5, num_filters=3)
  images = np.random.RandomState(0).normal(size=(6, 8, 8, 2)).astype(np.float32)
  variables = _perturbed(model.init(jax.random.PRNGKey(0), images[:1]), 1)
  assert classifier_path(model) == ("Dense_0",)
  features = _check_logits(model, variables, images, ("Dense_0",))
  assert features.shape == (6, 6)
  # The hand pass: per stage 3x3 conv + ReLU, 3x3 stride-2 conv + ReLU; global mean pool.
  x, p = jnp.asarray(images), variables["params"]
  for i, stride in enumerate([1, 2, 1, 2]):
    conv = p[f"Conv_{i}"]
    x = jax.lax.conv_general_dilated(x, conv["kernel"], (stride, stride), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = jax.nn.relu(x + conv["bias"])
  np.testing.assert_allclose(features, np.asarray(x.mean(axis=(1, 2))), rtol=1e-5, atol=1e-6)


def test_resnet18_features_with_batch_norm_statistics():
  model = get_model("resnet18_lowres", 4, num_filters=2)
  images = np.random.RandomState(2).normal(size=(3, 8, 8, 3)).astype(np.float32)
  variables = _perturbed(model.init(jax.random.PRNGKey(0), images[:1]), 3)
  features = _check_logits(model, variables, images, ("Dense_0",))
  assert features.shape == (3, 16)  # 8 x num_filters after the last stage
  assert np.all(features >= 0)      # the mean of ReLU outputs


@pytest.mark.parametrize("num_tags", [0, 3])
def test_bert_features_are_the_pooled_cls_vector(num_tags):
  config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=16, max_position_embeddings=6)
  model = get_text_model(4, num_tags, config)
  rng = np.random.RandomState(4)
  inputs = {"token_ids": rng.randint(0, 20, (5, 6)).astype(np.int32),
            "attention_mask": (np.arange(6)[None] < rng.randint(2, 7, (5, 1))).astype(np.int32)}
  variables = model.init(jax.random.PRNGKey(1), inputs, train=False)
  path = ("head", "intent_classifier" if num_tags else "classifier")
  assert classifier_path(model) == path
  features = _check_logits(model, variables, inputs, path)
  # The pooler by hand, from the encoder's hidden states.
  _, state = model.apply(variables, inputs, train=False, capture_intermediates=True)
  hidden = np.asarray(state["intermediates"]["bert"]["__call__"][0][0], np.float64)
  pooler = variables["params"]["bert"]["pooler"]
  pooled = np.tanh(hidden[:, 0] @ np.asarray(pooler["kernel"], np.float64)
                   + np.asarray(pooler["bias"], np.float64))
  np.testing.assert_allclose(features, pooled, rtol=1e-5, atol=1e-6)


def test_features_of_runs_batches_members_and_normalizes():
  """The chunked, jitted, vmapped pass equals per-model calls on the normalized images."""
  model = get_model("small_cnn", 3, num_filters=2)
  images = np.random.RandomState(5).randint(0, 256, (11, 8, 8, 1)).astype(np.uint8)
  mean, std = np.array([100.0], np.float32), np.array([50.0], np.float32)
  members = [_perturbed(model.init(jax.random.PRNGKey(0), images[:1].astype(np.float32)), s)
             for s in (6, 7)]
  out = features_of_runs(model, stack_trees(members), images, mean, std, batch_size=4)
  assert out.shape == (2, 11, 4) and out.dtype == np.float32
  normalized = (images.astype(np.float32) - mean) / std
  for r, variables in enumerate(members):
    np.testing.assert_allclose(out[r], np.asarray(penultimate_features(model, variables,
                                                                       normalized)),
                               rtol=1e-5, atol=1e-6)


def test_unknown_model_family_is_a_clear_error():
  class Other:  # pylint: disable=too-few-public-methods
    pass
  with pytest.raises(ScoreError, match="features are read for ResNet"):
    classifier_path(Other())
