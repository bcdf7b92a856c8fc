"""Fixtures shared by several test modules."""

import os

import pytest

# The suite compiles hundreds of small XLA:CPU programs and runs each a few steps, so LLVM's
# code optimisation is most of its time: tests build at --xla_backend_optimization_level=0
# (the same HLO and the same XLA passes, only the machine code is less optimised; measured on
# 2 CPU cores: 62 tests of models/train/ensemble/scores 266 s -> 180 s, all pass either way).
# Set here, before anything imports jax, so this process and every subprocess it starts
# (CLI, notebook kernels, multi-device scripts) inherit it; DATADIET_TEST_FULL_XLA_OPT=1
# runs the suite at XLA's default level instead (the library itself never sets it).
TEST_XLA_FLAGS = ("" if os.environ.get("DATADIET_TEST_FULL_XLA_OPT") == "1"
                  else "--xla_backend_optimization_level=0")
if TEST_XLA_FLAGS and TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared real data (read-only; CI has it too): all of CIFAR-10 as a tar of JPEGs.
REAL_CIFAR_TAR = os.path.normpath(os.path.join(REPO, "..", "shared", "data",
                                               "cifar10-jpeg.tar.gz"))


def snapshot_files(folder) -> dict:
  """{relative path: bytes} of every file under `folder` (to check nothing changed)."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


@pytest.fixture(scope="module")
def digits():
  """The embedded digits in the source order (a test module may define its own order)."""
  from datadiet_jax.data.sources import load_dataset  # pylint: disable=g-import-not-at-top
  return load_dataset("digits")


@pytest.fixture(scope="module")
def model(digits):
  """small_cnn, width 4, float32, for the digits."""
  from datadiet_jax.models import get_model  # pylint: disable=g-import-not-at-top
  return get_model("small_cnn", digits.num_classes, 4, "float32")


@pytest.fixture(scope="session")
def real_cifar_tar():
  """The shared CIFAR-10 JPEG tar; the test is skipped (with the reason) where it is absent."""
  if not os.path.exists(REAL_CIFAR_TAR):
    pytest.skip(f"real CIFAR-10 JPEG tar not found at {REAL_CIFAR_TAR} (the shared data "
                "folder is absent on this machine)")
  return REAL_CIFAR_TAR


@pytest.fixture(scope="session")
def shared_cifar_cache(tmp_path_factory):
  """One decoded-array cache for the tests that only *use* real CIFAR-10, so the tar is
  decoded once per session (test_data_sources decodes into its own to time it)."""
  return str(tmp_path_factory.mktemp("shared_cifar_cache"))


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory):
  """The environment of CLI subprocesses: CPU, the data cache in tmp, and a persistent XLA
  compile cache shared by the CLI subprocesses of this session (each distinct program is
  compiled once)."""
  base = tmp_path_factory.getbasetemp()
  return dict(os.environ, JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=str(base / "jax_compile_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              DATADIET_CACHE=str(base / "datadiet_cache"))


def model_training_gradients(name: str, width: int, train: bool, conv_impl: str, images,
                             labels):
  """(variables, d loss / d params) of the image model `name` under `conv_impl`: the
  batch-mean cross-entropy (train=True: BN batch statistics), init from PRNGKey(2)."""
  import jax
  import jax.numpy as jnp
  from datadiet_jax.models import get_model
  model = get_model(name, 10, width, conv_impl=conv_impl)
  variables = model.init(jax.random.PRNGKey(2), images[:1])
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss(params):
    out = model.apply({**rest, "params": params}, images, train=train,
                      mutable=["batch_stats"] if train else False)
    logits = out[0] if train else out
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  return variables, jax.jit(jax.grad(loss))(variables["params"])


def assert_same_init_close_gradients(ours, reference):
  """ours, reference: (variables, grads) of model_training_gradients. The same params tree
  and init exactly; gradients equal to float32 rounding (rtol 1e-4, atol 1e-5 of the max)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  (v_ours, g_ours), (v_ref, g_ref) = ours, reference
  assert jax.tree_util.tree_structure(v_ours) == jax.tree_util.tree_structure(v_ref)
  for a, b in zip(jax.tree_util.tree_leaves(v_ours), jax.tree_util.tree_leaves(v_ref)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def assert_same_scores(actual, desired):
  """Score files of two processes: the same to float32 rounding, almost all to the bit.

  The shards score every example in the batch shape and position of the single pass
  (scores/ensemble.py exact_batch), and on this repository's machines every value is the
  same bits. On the CI's CPU once one EL2N value of 1442 came out 1 ulp (6e-8) apart
  between concurrent processes (XLA's CPU kernels promise no bitwise equality across
  processes), so a few values may differ, by no more than float32 rounding (relative, or
  absolute 1e-6 for a std of near-equal runs, whose own relative error can be large)."""
  import numpy as np
  actual, desired = np.asarray(actual), np.asarray(desired)
  assert actual.shape == desired.shape and actual.dtype == desired.dtype
  np.testing.assert_allclose(actual, desired, rtol=1e-6, atol=1e-6)
  assert np.mean(actual != desired) <= 0.01, int(np.sum(actual != desired))
