"""models/onednn_conv.py: oneDNN's convolution (forward, input and weight gradient) through
XLA FFI custom calls equals XLA's own convolution in every supported setting, passes the
rest to lax unchanged, works under vmap, inside whole models and ghost GraNd, and fails
with a clear message when it cannot be built.

On Linux x86-64 the test extra installs oneDNN, so there these tests must run, not skip."""

import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from datadiet_jax import scores as S
from datadiet_jax.models import get_model
from datadiet_jax.models import onednn_conv as od
from datadiet_jax.models.conv import conv_general_dilated_for
from datadiet_jax.scores.grand_ghost import make_plan
from conftest import assert_same_init_close_gradients, model_training_gradients

NHWC = ("NHWC", "HWIO", "NHWC")
_SUPPORTED_PLATFORM = platform.system() == "Linux" and platform.machine() == "x86_64"
if not _SUPPORTED_PLATFORM:
  pytest.skip("oneDNN's PyPI wheels are Linux x86-64 only", allow_module_level=True)


def _rel(a, b) -> float:
  return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


def test_available_here():
  """The test extra installs the library; a missing compiler or package must fail loudly."""
  ok, why = od.onednn_available()
  assert ok, why


@pytest.mark.parametrize("x_shape, w_shape, strides, padding, dilation", [
    ((3, 9, 9, 4), (3, 3, 4, 5), (1, 1), "SAME", (1, 1)),
    ((3, 9, 9, 4), (3, 3, 4, 5), (2, 2), "SAME", (1, 1)),                # pads (1, 1)
    ((2, 8, 8, 6), (3, 3, 6, 7), (2, 2), "SAME", (1, 1)),                # pads (0, 1)
    ((2, 7, 8, 3), (2, 3, 3, 4), (1, 2), "VALID", (1, 1)),
    ((2, 7, 8, 3), (3, 3, 3, 4), (1, 1), ((2, 0), (1, 1)), (2, 1)),      # dilated, uneven
    ((2, 8, 8, 6), (1, 1, 6, 3), (2, 2), "SAME", (1, 1)),                # 1x1, strided
    ((1, 5, 5, 2), (5, 5, 2, 3), (1, 1), "VALID", (1, 1)),               # one output pixel
    ((16, 32, 32, 3), (3, 3, 3, 32), (1, 1), "SAME", (1, 1)),            # SimpleCNN's first
    ((8, 16, 16, 32), (3, 3, 32, 64), (2, 2), "SAME", (1, 1)),
])
def test_forward_and_both_gradients_equal_xla(x_shape, w_shape, strides, padding, dilation):
  kx, kw, kr = jax.random.split(jax.random.PRNGKey(0), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)

  def loss(conv_fn, x, w):
    y = conv_fn(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC)
    return jnp.sum(y * jax.random.normal(kr, y.shape)), y

  (l_ours, y_ours), g_ours = jax.jit(jax.value_and_grad(
      lambda x, w: loss(od.onednn_conv, x, w), (0, 1), has_aux=True))(x, w)
  (l_xla, y_xla), g_xla = jax.jit(jax.value_and_grad(
      lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1), has_aux=True))(x, w)
  assert y_ours.shape == y_xla.shape
  assert _rel(y_ours, y_xla) < 1e-5
  # The loss is a sum of terms of both signs that nearly cancel (|loss| can be ~1e-3 of
  # sum |terms|), so its error is measured against the terms' magnitude, not its own.
  magnitude = float(jnp.sum(jnp.abs(y_xla * jax.random.normal(kr, y_xla.shape))))
  assert abs(float(l_ours) - float(l_xla)) <= 1e-5 * magnitude
  for a, b in zip(g_ours, g_xla):  # dx, dw
    assert a.shape == b.shape and _rel(a, b) < 1e-5


def test_the_custom_calls_are_in_the_compiled_program():
  """Forward and both gradients really are the oneDNN custom calls (no silent fallback)."""
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 5))
  grad = jax.grad(lambda x, w: jnp.sum(od.onednn_conv(x, w, (1, 1), "SAME",
                                                      dimension_numbers=NHWC) ** 2), (0, 1))
  text = jax.jit(grad).lower(x, w).as_text()
  for target in ("datadiet_onednn_conv_fwd", "datadiet_onednn_conv_bwd_data",
                 "datadiet_onednn_conv_bwd_weights"):
    assert target in text


@pytest.mark.parametrize("case", ["groups", "bfloat16", "one_d", "input_dilation", "nchw"])
def test_unsupported_settings_pass_through_to_lax(case):
  x, w, kwargs = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 4)), {"dimension_numbers": NHWC}
  if case == "groups":
    w, kwargs["feature_group_count"] = jnp.ones((3, 3, 2, 4)), 2
  elif case == "bfloat16":
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  elif case == "one_d":
    x, w, kwargs = jnp.ones((2, 6, 4)), jnp.ones((3, 4, 4)), {"dimension_numbers": (
        "NWC", "WIO", "NWC")}
  elif case == "input_dilation":
    kwargs["lhs_dilation"] = (2, 2)
  else:
    x, kwargs = jnp.ones((2, 4, 6, 6)), {"dimension_numbers": ("NCHW", "HWIO", "NCHW")}
  strides, pads = (1,) * (x.ndim - 2), ((1, 1),) * (x.ndim - 2)
  ours = od.onednn_conv(x, w, strides, pads, **kwargs)
  text = jax.jit(lambda x, w: od.onednn_conv(x, w, strides, pads, **kwargs)).lower(
      x, w).as_text()
  assert "datadiet_onednn" not in text
  np.testing.assert_array_equal(ours, lax.conv_general_dilated(x, w, strides, pads,
                                                               **kwargs))


def test_vmap_over_members_equals_each_member():
  """vmapped (e.g. an ensemble's members: own weights and inputs) = one call per member."""
  xs = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 8, 8, 4))
  ws = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 4, 6))

  def loss(x, w):
    return jnp.sum(jnp.sin(od.onednn_conv(x, w, (2, 2), "SAME", dimension_numbers=NHWC)))

  batched = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1))))(xs, ws)
  for m in range(3):
    one = jax.jit(jax.value_and_grad(loss, (0, 1)))(xs[m], ws[m])
    np.testing.assert_allclose(batched[0][m], one[0], rtol=1e-6)
    for a, b in zip(batched[1], one[1]):
      np.testing.assert_allclose(a[m], b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, width, train", [("simple_cnn", 4, False),
                                                ("resnet18_lowres", 4, True)])
def test_model_training_gradients_equal_xla(name, width, train):
  """Same params tree; the training loss gradient equals XLA's (BN batch statistics).

  A small batch: in a ReLU network, a pre-activation within rounding of 0 can take the
  other side of the ReLU under any two valid conv implementations and move the gradients of
  the layers below by ~1e-3 of their maximum (seen for SimpleCNN at batch 128; with GELU
  instead of ReLU the same comparison agrees to 3e-6). The test asserts there is no such
  sign change here, so the tight tolerance checks the convolutions themselves."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  labels = jnp.array([0, 3, 7, 9])
  grads = {impl: model_training_gradients(name, width, train, impl, x, labels)
           for impl in ("onednn", "xla")}
  activations = {}
  for impl, (variables, _) in grads.items():
    _, captured = get_model(name, 10, width, conv_impl=impl).apply(
        variables, x, train=train, capture_intermediates=True,
        mutable=["intermediates", "batch_stats"])
    activations[impl] = jax.tree_util.tree_leaves(captured["intermediates"])
  for a, b in zip(activations["onednn"], activations["xla"]):
    assert not np.any((np.asarray(a) > 0) != (np.asarray(b) > 0))
  assert_same_init_close_gradients(grads["onednn"], grads["xla"])


def test_ghost_grand_on_a_onednn_model_equals_vmap_grand_on_xla():
  """The ghost norms read only layer inputs and output cotangents, so a oneDNN model keeps
  the ghost method (no fallback) and gives the vmap(grad) GraNd of the XLA model."""
  x = jax.random.normal(jax.random.PRNGKey(4), (5, 12, 12, 3))
  labels = np.array([1, 5, 9, 0, 2])
  ours_model = get_model("simple_cnn", 10, 4, conv_impl="onednn")
  xla_model = get_model("simple_cnn", 10, 4)
  variables = xla_model.init(jax.random.PRNGKey(0), x[:1])
  plan = make_plan(S.eval_apply_fn(ours_model), variables, x)
  assert plan.unsupported is None, plan.unsupported
  ghost = jax.jit(lambda v, x, y: S.grand_ghost(S.eval_apply_fn(ours_model), v, x, y))(
      variables, x, labels)
  vmapped = jax.jit(lambda v, x, y: S.grand(S.eval_apply_fn(xla_model), v, x, y))(
      variables, x, labels)
  np.testing.assert_allclose(ghost, vmapped, rtol=1e-5)


def test_selection_and_model_field():
  assert conv_general_dilated_for("onednn") is od.onednn_conv
  assert get_model("simple_cnn", 10, 4, conv_impl="onednn").conv_impl == "onednn"


def test_unavailable_is_a_clear_user_error(monkeypatch):
  monkeypatch.setattr(od, "onednn_available",
                      lambda: (False, "conv_impl='onednn' needs the package onednn-cpu-gomp"))
  with pytest.raises(ValueError, match="needs the package onednn-cpu-gomp"):
    get_model("simple_cnn", 10, 4, conv_impl="onednn")


def test_missing_compiler_names_it(monkeypatch, tmp_path):
  monkeypatch.setenv("DATADIET_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
  with pytest.raises(od.OnednnUnavailable, match="no-such-g\\+\\+.*was not found"):
    od.build_library()
  assert not any(tmp_path.rglob("*.so*"))


def test_failed_compile_leaves_no_library(monkeypatch, tmp_path):
  """A compiler that fails: the error shows the command; no library or partial file stays
  in the cache (the next call would otherwise load a broken file)."""
  monkeypatch.setenv("DATADIET_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", "false")
  with pytest.raises(od.OnednnUnavailable, match="compiling the oneDNN convolution failed"):
    od.build_library()
  assert not any(tmp_path.rglob("*.so*")), list(tmp_path.rglob("*"))


def test_build_is_cached_and_atomic(monkeypatch, tmp_path):
  """A fresh cache compiles once into a named library; a second call reuses it."""
  monkeypatch.setenv("DATADIET_CACHE", str(tmp_path))
  first = od.build_library()
  stamp = os.stat(first).st_mtime_ns
  assert first.parent == tmp_path / "onednn_conv" and first.suffix == ".so"
  assert od.build_library() == first and os.stat(first).st_mtime_ns == stamp
  assert [p.name for p in first.parent.iterdir()] == [first.name]
