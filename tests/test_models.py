"""Models: shapes, parameter counts against hand-derived numbers, BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datadiet_jax.models import MODEL_NAMES, get_model
from datadiet_jax.train.state import init_variables, num_params


def test_resnet18_full_width_has_the_cifar_resnet18_parameter_count():
  # The standard CIFAR ResNet18 (3x3 stem, no max pool, 10 classes): 11,173,962 params.
  model = get_model("resnet18_lowres", 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  assert num_params(shapes["params"]) == 11_173_962


def test_simple_cnn_parameter_count_matches_hand_count():
  model = get_model("simple_cnn", 10)  # channels 32, 64, 128 as the original simple_cnn_0
  variables = init_variables(model, 0, (32, 32, 3))
  expected, c_in = 0, 3
  for c in (32, 64, 128):
    expected += (9 * c_in * c + c) + (9 * c * c + c)
    c_in = c
  expected += 128 * 10 + 10
  assert num_params(variables["params"]) == expected
  assert "batch_stats" not in variables


def test_resnet_batchnorm_train_mode_updates_running_stats_and_eval_uses_them():
  model = get_model("resnet18_lowres", 10, num_filters=4)
  variables = init_variables(model, 0, (32, 32, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3)) * 3 + 1
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (8, 10)
  old = variables["batch_stats"]["bn_init"]["mean"]
  new = updates["batch_stats"]["bn_init"]["mean"]
  # momentum 0.9: new = 0.9 * old + 0.1 * batch mean (old = 0).
  assert np.allclose(new, 0.1 * np.asarray(jnp.mean(
      jax.lax.conv_general_dilated(x, variables["params"]["conv_init"]["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")), (0, 1, 2))),
                     rtol=1e-4, atol=1e-5)
  eval_logits = model.apply(variables, x, train=False)
  assert not np.allclose(eval_logits, logits)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_maps_images_to_logits(name):
  shape = (8, 8, 1)
  filters = 4 if name.startswith("resnet") else 8
  model = get_model(name, 7, num_filters=filters)
  variables = init_variables(model, 0, shape)
  out = model.apply(variables, jnp.ones((2, *shape)), train=False)
  assert out.shape == (2, 7) and out.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = get_model("simple_cnn", 10, num_filters=8, dtype="bfloat16")
  variables = init_variables(model, 0, (32, 32, 3))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  assert model.apply(variables, jnp.ones((1, 32, 32, 3))).dtype == jnp.float32


def test_unknown_model_and_bad_width_are_clear_errors():
  with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18_lowres"):
    get_model("resnet19", 10)
  with pytest.raises(ValueError, match="num_filters must be positive"):
    get_model("simple_cnn", 10, num_filters=0)
