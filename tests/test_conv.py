"""models/conv.py: the im2col-matmul weight gradient equals XLA's own, for single convs in
every supported setting and for whole SimpleCNN / ResNet18 training gradients; the params
tree does not depend on conv_impl."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from datadiet_jax.models import conv as conv_module
from datadiet_jax.models import get_model
from datadiet_jax.models.conv import conv_general_dilated_for, matmul_wgrad_conv
from conftest import assert_same_init_close_gradients, model_training_gradients

NHWC = ("NHWC", "HWIO", "NHWC")
NWC = ("NWC", "WIO", "NWC")


@pytest.mark.parametrize("x_shape, w_shape, strides, padding, dilation, dn", [
    ((3, 9, 9, 4), (3, 3, 4, 5), (1, 1), "SAME", (1, 1), NHWC),
    ((3, 9, 9, 4), (3, 3, 4, 5), (2, 2), "SAME", (1, 1), NHWC),       # asymmetric pads
    ((2, 7, 8, 3), (2, 3, 3, 4), (1, 2), "VALID", (1, 1), NHWC),
    ((2, 7, 8, 3), (3, 3, 3, 4), (1, 1), ((2, 0), (1, 1)), (2, 1), NHWC),
    ((2, 8, 8, 6), (1, 1, 6, 3), (2, 2), "SAME", (1, 1), NHWC),
    ((4, 11, 3), (3, 3, 2), (2,), "SAME", (1,), NWC),                  # 1-D
])
def test_weight_and_input_gradients_equal_xla(x_shape, w_shape, strides, padding, dilation,
                                               dn):
  kx, kw, kr = jax.random.split(jax.random.PRNGKey(0), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)

  def loss(conv_fn, x, w):
    y = conv_fn(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dn)
    return jnp.sum(y * jax.random.normal(kr, y.shape))

  ours = jax.jit(jax.value_and_grad(lambda x, w: loss(matmul_wgrad_conv, x, w), (0, 1)))(x, w)
  xla = jax.jit(jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w),
                                   (0, 1)))(x, w)
  np.testing.assert_allclose(ours[0], xla[0], rtol=1e-6)
  for a, b in zip(ours[1], xla[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("images_per_chunk", [1, 2, 3])
def test_chunked_weight_gradient_equals_xla(images_per_chunk):
  """The weight gradient formed chunk by chunk (a lax.scan over groups of images, the last
  group zero-padded when 3 images do not split into 2s) equals XLA's for a strided,
  asymmetrically padded conv."""
  x = jax.random.normal(jax.random.PRNGKey(3), (3, 9, 9, 4))
  dy = jax.random.normal(jax.random.PRNGKey(4), (3, 5, 5, 6))
  w = jnp.zeros((3, 3, 4, 6))
  pads = tuple(tuple(p) for p in lax.padtype_to_pads((9, 9), (3, 3), (2, 2), "SAME"))
  per_image = 9 * 4 * 25 * 4  # taps * Cin * output positions * bytes
  assert conv_module.images_per_chunk(3, per_image, images_per_chunk * per_image) == (
      images_per_chunk)
  ours = jax.jit(lambda x, dy: conv_module.weight_gradient(
      x, dy, w.shape, ((2, 2), pads, (1, 1), None), images_per_chunk * per_image))(x, dy)
  _, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                                      dimension_numbers=NHWC), w)
  (xla,) = vjp(dy)
  np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(xla))))


def test_unsupported_settings_pass_through_to_lax():
  x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 2, 4))  # two groups
  y = matmul_wgrad_conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2)
  np.testing.assert_allclose(y, lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2))


@pytest.mark.parametrize("name, width, train", [("simple_cnn", 4, False),
                                                ("resnet18_lowres", 4, True)])
def test_model_training_gradients_equal_xla(name, width, train):
  """Same params tree and init; the training loss gradient equals XLA's (BN batch stats)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  labels = jnp.array([0, 3, 7, 9])
  grads = {impl: model_training_gradients(name, width, train, impl, x, labels)
           for impl in ("matmul", "xla")}
  assert_same_init_close_gradients(grads["matmul"], grads["xla"])


def test_conv_impl_selection():
  expected = matmul_wgrad_conv if jax.default_backend() == "cpu" else None
  assert conv_general_dilated_for("auto") is expected
  assert conv_general_dilated_for("xla") is None
  assert conv_general_dilated_for("matmul") is matmul_wgrad_conv
  with pytest.raises(ValueError, match="unknown conv_impl 'fast'"):
    conv_general_dilated_for("fast")
  assert isinstance(get_model("simple_cnn", 10, 4), nn.Module)
  assert get_model("simple_cnn", 10, 4).conv_impl == "xla"
  assert get_model("resnet18_lowres", 10, 4, conv_impl="matmul").conv_impl == "matmul"
  with pytest.raises(ValueError, match="unknown conv_impl 'fast'"):
    get_model("simple_cnn", 10, 4, conv_impl="fast")
