"""Training: schedules, optimizer semantics, batching, augmentation, forgetting, vmap."""

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from datadiet_jax.data.augment import pad_crop_flip
from datadiet_jax.data.batching import BatchSchedule
from datadiet_jax.models import get_model
from datadiet_jax.train.ensemble import stack_trees, unstack_tree
from datadiet_jax.train.forgetting import (forgetting_scores, init_forget_stats,
                                           update_forget_stats)
from datadiet_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from datadiet_jax.train.state import create_train_state
from datadiet_jax.train.step import make_train_step


def test_stepped_schedule_matches_the_original_boundaries():
  lr = learning_rate_schedule(OptimizerConfig(), steps_per_epoch=390)
  # Steps 1..23400 (epochs 1-60) use 0.1; the decay applies from the step after a boundary.
  expected = {1: 0.1, 23400: 0.1, 23401: 0.02, 46800: 0.02, 46801: 0.004, 62400: 0.004,
              62401: 0.0008, 78000: 0.0008}
  for step, value in expected.items():
    assert float(lr(step)) == pytest.approx(value, rel=1e-6), step


def test_vitaly_and_constant_schedules():
  vitaly = learning_rate_schedule(OptimizerConfig(schedule="vitaly"), 390)
  assert float(vitaly(2340)) == pytest.approx(0.1)
  assert float(vitaly(4680)) == pytest.approx(0.2)
  assert float(vitaly(31200)) == pytest.approx(0.0, abs=1e-7)
  assert float(vitaly(17940)) == pytest.approx(0.1)
  constant = learning_rate_schedule(OptimizerConfig(schedule="constant", learning_rate=0.3), 10)
  assert float(constant(1)) == float(constant(10_000)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="unknown lr schedule 'cosine'"):
    OptimizerConfig(schedule="cosine")


def test_linear_warmup_multiplies_every_schedule():
  """lr(t) * min(1, t / W), by hand, for the stepped and the constant schedule."""
  stepped = learning_rate_schedule(
      OptimizerConfig(learning_rate=0.1, decay_epochs=(2,), decay_factor=0.5, warmup_steps=4),
      steps_per_epoch=5)
  # Warm-up 1/4 .. 4/4 over steps 1-4, then the stepped values (decay after step 10).
  expected = {1: 0.025, 2: 0.05, 3: 0.075, 4: 0.1, 5: 0.1, 10: 0.1, 11: 0.05, 100: 0.05}
  for step, value in expected.items():
    assert float(stepped(step)) == pytest.approx(value, rel=1e-6), step
  constant = learning_rate_schedule(
      OptimizerConfig(learning_rate=0.3, schedule="constant", warmup_steps=3), 10)
  np.testing.assert_allclose([float(constant(t)) for t in (1, 2, 3, 7)], [0.1, 0.2, 0.3, 0.3],
                             rtol=1e-6)
  # Inside the optimizer: the first update of plain SGD (no momentum/decay) is -lr(1) * g.
  tx = make_optimizer(OptimizerConfig(learning_rate=0.3, schedule="constant", momentum=0.0,
                                      nesterov=False, weight_decay=0.0, warmup_steps=3), 10)
  params = {"w": jnp.array([1.0, 2.0])}
  state = tx.init(params)
  for lr in (0.1, 0.2, 0.3, 0.3):
    updates, state = tx.update({"w": jnp.array([1.0, -1.0])}, state, params)
    np.testing.assert_allclose(updates["w"], [-lr, lr], rtol=1e-6)
  with pytest.raises(ValueError, match="warm-up steps must be >= 0"):
    OptimizerConfig(warmup_steps=-1)


def test_optimizer_is_flax_optim_momentum_with_coupled_weight_decay():
  """Hand-written flax.optim.Momentum(beta=0.9, wd, nesterov) over 3 steps."""
  config = OptimizerConfig(learning_rate=0.1, weight_decay=5e-4, decay_epochs=(1,),
                           decay_factor=0.2)
  tx = make_optimizer(config, steps_per_epoch=2)
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = [jnp.array([0.5, 0.1, -0.3]), jnp.array([-0.2, 0.4, 0.0]), jnp.array([1.0, 1.0, 1.0])]
  opt_state = tx.init(params)
  p, m = np.array([1.0, -2.0, 3.0]), np.zeros(3)
  for t, g in enumerate(grads, start=1):
    updates, opt_state = tx.update({"w": g}, opt_state, params)
    params = optax.apply_updates(params, updates)
    lr = 0.1 if t <= 2 else 0.02
    d = np.asarray(g) + 5e-4 * p
    m = 0.9 * m + d
    p = p - lr * (d + 0.9 * m)
    np.testing.assert_allclose(params["w"], p, rtol=1e-6)


def test_batches_are_a_pure_function_of_the_step_and_cover_each_epoch_once():
  ids = np.arange(10, 60, dtype=np.int32)
  schedule = BatchSchedule(ids, batch_size=16, seed=3)
  assert schedule.steps_per_epoch == 3  # 50 // 16, remainder dropped
  epoch = np.concatenate([schedule.batch_ids(t) for t in (1, 2, 3)])
  assert len(set(epoch.tolist())) == 48 and set(epoch.tolist()) <= set(ids.tolist())
  again = BatchSchedule(ids.copy(), batch_size=16, seed=3)
  np.testing.assert_array_equal(again.batch_ids(5), schedule.batch_ids(5))
  assert not np.array_equal(schedule.batch_ids(1), schedule.batch_ids(4))  # new epoch order
  assert not np.array_equal(BatchSchedule(ids, 16, seed=4).batch_ids(1), schedule.batch_ids(1))
  with pytest.raises(ValueError, match="batch size must be positive"):
    BatchSchedule(ids, 0, 1)
  with pytest.raises(ValueError, match="exceeds the 50 training examples"):
    BatchSchedule(ids, 51, 1)


def test_augmentation_is_a_reflect_padded_crop_with_optional_flip():
  images = jax.random.normal(jax.random.PRNGKey(0), (64, 8, 8, 2))
  out = np.asarray(pad_crop_flip(jax.random.PRNGKey(1), images))
  padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
  flipped = 0
  for i in range(64):
    candidates = [(padded[i, r:r + 8, c:c + 8], f) for r in range(9) for c in range(9)
                  for f in (False, True)]
    matches = [f for crop, f in candidates
               if np.array_equal(out[i], crop[:, ::-1] if f else crop)]
    assert matches, i
    flipped += matches[0]
  assert 15 < flipped < 49  # about half flipped
  again = np.asarray(pad_crop_flip(jax.random.PRNGKey(1), images))
  np.testing.assert_array_equal(out, again)


def _reference_forgetting(num_examples, events):
  """The original numpy algorithm, verbatim in spirit: prev_accs, num_forgets, never_correct."""
  prev = np.zeros(num_examples, np.int32)
  forgets = np.zeros(num_examples)
  never = set(range(num_examples))
  for ids, acc in events:
    forgets[ids[prev[ids] > acc]] += 1
    prev[ids] = acc
    never -= set(ids[acc.astype(bool)].tolist())
  scores = forgets.copy()
  scores[sorted(never)] = np.inf
  return scores


def test_forgetting_matches_the_original_bookkeeping():
  rng = np.random.RandomState(0)
  n, stats, events = 40, init_forget_stats(40), []
  update = jax.jit(update_forget_stats)
  for _ in range(30):
    ids = rng.choice(n - 5, 8, replace=False).astype(np.int32)  # 5 examples never visited
    acc = (rng.rand(8) < 0.6).astype(np.int32)
    events.append((ids, acc))
    stats = update(stats, ids, acc.astype(bool))
  expected = _reference_forgetting(n, events)
  np.testing.assert_array_equal(np.asarray(forgetting_scores(stats)), expected)
  assert np.isinf(expected[-5:]).all() and expected.max() > 1


def _toy_batch(key, n=16):
  k1, k2 = jax.random.split(key)
  return {"images": jax.random.randint(k1, (n, 8, 8, 1), 0, 256).astype(jnp.uint8),
          "labels": jax.random.randint(k2, (n,), 0, 3), "example_ids": jnp.arange(n)}


@pytest.mark.parametrize("name,filters", [("small_cnn", 4), ("resnet18_lowres", 2)])
def test_vmapped_train_step_over_two_seeds_equals_two_separate_steps(name, filters):
  model = get_model(name, 3, num_filters=filters)
  tx = make_optimizer(OptimizerConfig(), steps_per_epoch=10)
  step = make_train_step(model, tx, np.array([128.0]), np.array([64.0]), augment=True)
  states = [create_train_state(model, tx, s, 100 + s, (8, 8, 1)) for s in (1, 2)]
  batches = [_toy_batch(jax.random.PRNGKey(s)) for s in (1, 2)]
  for _ in range(2):  # two steps so momentum and BN stats are exercised
    separate = [jax.jit(step)(st, b) for st, b in zip(states, batches)]
    stacked, metrics = jax.jit(jax.vmap(step))(stack_trees(states), stack_trees(batches))
    for member, (state_alone, metrics_alone) in zip(unstack_tree(stacked), separate):
      for a, b in zip(jax.tree_util.tree_leaves(member), jax.tree_util.tree_leaves(state_alone)):
        # Batched vs unbatched convolutions sum in a different order: float32 noise only.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)
    for i, (_, metrics_alone) in enumerate(separate):
      np.testing.assert_array_equal(metrics["correct"][i], metrics_alone["correct"])
      np.testing.assert_allclose(metrics["loss"][i], metrics_alone["loss"], rtol=1e-5)
    states = [s for s, _ in separate]
  assert int(states[0].step) == 2
