"""The original optimizer and learning-rate schedules.

flax.optim.Momentum(lr, beta=0.9, weight_decay=5e-4, nesterov=True) added
`weight_decay * param` to the gradient of *every* parameter before the momentum
update; optax's add_decayed_weights followed by sgd(nesterov=True) is the same map.

Schedules are functions of the 1-indexed step t (the t-th update), as the original
evaluated `lr(t)`; optax counts updates from 0, hence `count + 1` below.

For fine-tuning transformers (BERT): `optimizer="adamw"` (optax.adamw, decoupled weight
decay on matrices only: not on biases and LayerNorm scales, as BERT's recipe) with
`schedule="linear"`: linear warm-up from 0 to the lr over `warmup_steps`, then linear
decay to 0 at `total_steps` (the loop fills in the run's length).

Warm-up (not in the original; off by default): with `warmup_steps = W > 0` every schedule
is multiplied by optax.linear_schedule(0 -> 1 over W steps), i.e. lr(t) * min(1, t / W)
(the "linear" schedule has this warm-up built in, so it is not applied twice):
step 1 trains at lr/W, step W and later at the schedule's own value. It lets a
BatchNorm-free network (SimpleCNN) start at a learning rate it cannot survive at step 1.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("stepped", "constant", "vitaly", "linear")
OPTIMIZERS = ("sgd", "adamw")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """SGD with (Nesterov) momentum and coupled weight decay, as the original.

  decay_epochs / decay_factor: the stepped schedule multiplies the lr by
  `decay_factor` after each epoch boundary (the original: 60, 120, 160 and 0.2).
  vitaly_*: the original's `lr_vitaly` triangle (0 -> peak at `vitaly_top` -> 0 at
  `vitaly_total` steps).
  warmup_steps: linear warm-up factor min(1, t / warmup_steps) on top of the schedule
  (0: none, the original).
  """

  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 5e-4
  schedule: str = "stepped"
  decay_epochs: Sequence[int] = (60, 120, 160)
  decay_factor: float = 0.2
  vitaly_peak: float = 0.2
  vitaly_top: int = 4680
  vitaly_total: int = 31200
  optimizer: str = "sgd"
  warmup_steps: int = 0
  total_steps: int = 0

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer '{self.optimizer}'; choose one of "
                       f"{', '.join(OPTIMIZERS)}")
    if self.warmup_steps < 0:
      raise ValueError(f"warm-up steps must be >= 0, got {self.warmup_steps}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown lr schedule '{self.schedule}'; choose one of "
                       f"{', '.join(SCHEDULES)}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning rate must be positive, got {self.learning_rate}")


def learning_rate_schedule(config: OptimizerConfig, steps_per_epoch: int) -> Callable:
  """Returns lr(t) for the 1-indexed step t (works on ints and traced arrays), warm-up
  included."""
  schedule = _base_schedule(config, steps_per_epoch)
  if not config.warmup_steps or config.schedule == "linear":  # linear warms up by itself
    return schedule
  warmup = optax.linear_schedule(0.0, 1.0, config.warmup_steps)
  return lambda t: schedule(t) * warmup(t)


def _base_schedule(config: OptimizerConfig, steps_per_epoch: int) -> Callable:
  if config.schedule == "constant":
    return lambda t: jnp.asarray(config.learning_rate, jnp.float32) + 0.0 * t
  if config.schedule == "stepped":
    boundaries = jnp.asarray([e * steps_per_epoch for e in config.decay_epochs], jnp.int32)

    def stepped(t):
      # The lr changes *after* a boundary step: steps 1..b use the previous value.
      num_decays = jnp.sum(boundaries < jnp.asarray(t)[..., None], axis=-1)
      return config.learning_rate * config.decay_factor**num_decays

    return stepped
  if config.schedule == "linear":
    warmup, total = config.warmup_steps, max(config.total_steps, config.warmup_steps + 1)

    def linear(t):
      t = jnp.asarray(t, jnp.float32)
      up = t / max(warmup, 1)
      down = jnp.maximum(0.0, (total - t) / max(total - warmup, 1))
      return config.learning_rate * jnp.where(t <= warmup, jnp.minimum(up, 1.0), down)

    return linear
  peak, top, total = config.vitaly_peak, config.vitaly_top, config.vitaly_total

  def vitaly(t):
    t = jnp.asarray(t, jnp.float32)
    return jnp.where(t <= top, peak * t / top, peak - peak * (t - top) / (total - top))

  return vitaly


def make_optimizer(config: OptimizerConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "adamw":
    return optax.adamw(lambda count: schedule(count + 1), b1=0.9, b2=0.999, eps=1e-8,
                       weight_decay=config.weight_decay,
                       mask=lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params))
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(lambda count: schedule(count + 1), momentum=config.momentum,
                nesterov=config.nesterov))
