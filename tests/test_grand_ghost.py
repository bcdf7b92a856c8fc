"""GraNd by ghost norms (scores/grand_ghost.py) against vmap(grad) and a brute-force loop of
one jax.grad per example, on every supported layer type and setting (padding, strides,
dilation, 1-D/2-D convs, both the ghost and the instantiated form, token Dense, BatchNorm
with running statistics, LayerNorm, Embed), the fallback on unknown layers, ensembles with a
padded last chunk."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datadiet_jax import scores as S
from datadiet_jax.models import get_model
from datadiet_jax.scores.grand_ghost import _ghost_is_cheaper, make_plan
from datadiet_jax.train.ensemble import stack_trees
from datadiet_jax.train.state import init_variables

RTOL = 1e-5


def _brute_force(apply_fn, variables, inputs, labels):
  """One jax.grad per example (a Python loop over batches of 1), norm summed in float64."""
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  @jax.jit
  def example_grad(p, one_input, label):  # one example, as a batch of 1
    return jax.grad(lambda p: -jax.nn.log_softmax(apply_fn({**rest, "params": p},
                                                           one_input))[0, label])(p)

  out = []
  for i in range(len(labels)):
    g = example_grad(params, inputs[i:i + 1], labels[i])
    out.append(math.sqrt(sum(float(np.sum(np.asarray(x, np.float64)**2))
                             for x in jax.tree_util.tree_leaves(g))))
  return np.array(out)


def _check(apply_fn, variables, inputs, labels, expect_ghost=True):
  plan = make_plan(apply_fn, variables, inputs)
  assert (plan.unsupported is None) == expect_ghost, plan.unsupported
  ghost = np.asarray(jax.jit(lambda v, x, y: S.grand_ghost(apply_fn, v, x, y))(
      variables, inputs, labels))
  vmapped = np.asarray(jax.jit(lambda v, x, y: S.grand(apply_fn, v, x, y))(
      variables, inputs, labels))
  brute = _brute_force(apply_fn, variables, inputs, labels)
  np.testing.assert_allclose(ghost, vmapped, rtol=RTOL)
  np.testing.assert_allclose(ghost, brute, rtol=RTOL)
  assert np.all(ghost > 0) and np.ptp(ghost) > 0
  return plan


class ConvZoo(nn.Module):
  """Convs with every supported setting; the 2x2 map with 16 -> 24 channels is ghost-form."""

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Conv(6, (3, 3), strides=2, padding="SAME")(x))           # 9x9 -> 5x5
    x = nn.tanh(nn.Conv(5, (2, 3), strides=(1, 2), padding="VALID",
                        use_bias=False)(x))                                    # -> 4x2
    x = nn.tanh(nn.Conv(7, (3, 3), padding=((2, 0), (1, 1)), kernel_dilation=(2, 1))(x))
    x = nn.tanh(nn.Conv(16, (1, 1), padding=1)(x))                             # -> 4x4
    x = nn.tanh(nn.Conv(16, (3, 3), strides=2)(x))                             # SAME -> 2x2
    x = nn.tanh(nn.Conv(24, (3, 3))(x))                                        # ghost form
    line = nn.tanh(nn.Conv(4, 3, strides=2, padding="SAME")(x.reshape(x.shape[0], 4, 24)))
    return nn.Dense(5)(line.reshape(line.shape[0], -1))


def test_conv_layers_all_settings():
  model = ConvZoo()
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 9, 9, 3))
  labels = np.array([0, 1, 2, 3, 4])
  variables = model.init(jax.random.PRNGKey(1), x)
  plan = _check(model.apply, variables, x, labels)
  convs = [c for c in plan.calls if c.kind == "conv"]
  assert len(convs) == 7
  # Both forms are exercised: instantiated in the first layer, ghost on the 2x2 map.
  first, ghost = convs[0], convs[5]
  assert first.out_shape == (5, 5, 5, 6) and not _ghost_is_cheaper(25, 3 * 9, 6)
  assert ghost.out_shape == (5, 2, 2, 24) and _ghost_is_cheaper(4, 16 * 9, 24)


class TokenModel(nn.Module):
  """Embed -> LayerNorm -> token Dense (ghost and instantiated) -> BatchNorm -> Dense."""

  @nn.compact
  def __call__(self, ids):
    h = nn.Embed(7, 16)(ids)                       # [B, L=6, 16], repeated ids
    h = nn.LayerNorm()(h)
    h = nn.tanh(nn.Dense(16)(h))                   # T=6: 6 * 32 < 256 -> ghost form
    h = nn.LayerNorm(use_bias=False, use_fast_variance=False)(h)
    h = nn.tanh(nn.Dense(3, use_bias=False)(h))    # T=6: 6 * 19 > 48 -> instantiated
    h = nn.BatchNorm(use_running_average=True)(h)  # features on the last axis, over tokens
    return nn.Dense(4)(h.reshape(h.shape[0], -1))


def test_embed_layer_norm_token_dense_batch_norm():
  model = TokenModel()
  ids = jnp.array([[0, 1, 1, 2, 6, 0], [3, 3, 3, 3, 3, 3], [5, 4, 3, 2, 1, 0]])
  variables = model.init(jax.random.PRNGKey(2), ids)
  # Non-trivial running statistics and LayerNorm/BatchNorm scales.
  variables = jax.tree_util.tree_map(
      lambda a: a + 0.3 * jax.random.uniform(jax.random.PRNGKey(a.size), a.shape), variables)
  plan = _check(model.apply, variables, ids, np.array([0, 3, 1]))
  assert [c.kind for c in plan.calls] == ["embed", "layer_norm", "dense", "layer_norm",
                                          "dense", "batch_norm", "dense"]
  assert _ghost_is_cheaper(6, 16, 16) and not _ghost_is_cheaper(6, 16, 3)


def test_resnet18_eval_mode_batch_norm():
  model = get_model("resnet18_lowres", 10, 4)
  variables = init_variables(model, 3, (8, 8, 3))
  # Running statistics away from (0, 1), so eval-mode BN is not the identity.
  stats = jax.tree_util.tree_map(
      lambda a: a * 0.5 + jax.random.uniform(jax.random.PRNGKey(a.size), a.shape),
      variables["batch_stats"])
  variables = {**variables, "batch_stats": stats}
  x = jax.random.normal(jax.random.PRNGKey(4), (3, 8, 8, 3))
  plan = _check(S.eval_apply_fn(model), variables, x, np.array([1, 5, 9]))
  assert {c.kind for c in plan.calls} == {"conv", "batch_norm", "dense"}


class Custom(nn.Module):
  """A parameter outside any known layer."""

  @nn.compact
  def __call__(self, x):
    gain = self.param("gain", nn.initializers.ones, (x.shape[-1],))
    return nn.Dense(3)(x * gain)


class Shared(nn.Module):
  """One Dense applied twice (shared weights)."""

  @nn.compact
  def __call__(self, x):
    dense = nn.Dense(4)
    return dense(nn.tanh(dense(x)))


class Tied(nn.Module):
  """Embed.attend: the table used as an output layer too."""

  @nn.compact
  def __call__(self, ids):
    embed = nn.Embed(5, 4)
    return embed.attend(jnp.mean(embed(ids), axis=1))


@pytest.mark.parametrize("module, inputs, reason", [
    (Custom(), jnp.linspace(-1, 1, 12).reshape(3, 4), "parameters outside"),
    (Shared(), jnp.linspace(-1, 1, 12).reshape(3, 4), "more than once"),
    (Tied(), jnp.array([[0, 1], [2, 2], [4, 3]]), "attend"),
])
def test_unknown_layers_fall_back_to_vmap(module, inputs, reason):
  variables = module.init(jax.random.PRNGKey(0), inputs)
  assert reason in make_plan(module.apply, variables, inputs).unsupported
  _check(module.apply, variables, inputs, np.array([0, 2, 1]), expect_ghost=False)


def test_ensemble_padded_last_chunk_and_vmapped_members():
  """score_ensemble with ghost GraNd, members vmapped, N = 7 in chunks of 3 (last padded)."""
  model = get_model("small_cnn", 10, 4)
  apply_fn = S.eval_apply_fn(model)
  inits = [init_variables(model, s, (8, 8, 3)) for s in (0, 1)]
  rng = np.random.default_rng(0)
  images = rng.normal(size=(7, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, 10, 7).astype(np.int32)
  _, _, per_member = S.score_ensemble("grand", apply_fn, stack_trees(inits), images, labels,
                                      batch_size=3, progress=False)
  expected = np.stack([_brute_force(apply_fn, v, images, labels) for v in inits])
  np.testing.assert_allclose(per_member, expected, rtol=RTOL)
  _, _, by_vmap = S.score_ensemble("grand", apply_fn, stack_trees(inits), images, labels,
                                   batch_size=3, progress=False, grand_method="vmap")
  np.testing.assert_allclose(per_member, by_vmap, rtol=RTOL)
  with pytest.raises(S.ScoreError, match="unknown GraNd method 'jacobian'"):
    S.get_score_fn("grand", "jacobian")

# The memory of ResNet18-64 ghost GraNd with 10 vmapped members (the default path of
# make_ensemble_score_fn) is checked by tests/test_scores.py::test_default_chunk_fits_memory.
