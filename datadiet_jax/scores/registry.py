"""Score functions by name.

Every score function has the signature `(apply_fn, variables, images, labels) -> f32[B]`
with apply_fn(variables, images f32[B, H, W, C]) -> logits f32[B, C] the eval-mode model
(`eval_apply_fn(model)`), images normalized f32[B, H, W, C] and labels i32[B].

`forgetting` is not a function of a model: it is read from a run's checkpoint with
`datadiet_jax.scores.forgetting.load_forgetting_scores`.

GraNd has two methods with the same values (within float32 rounding): "ghost" (the default;
grand_ghost.py: one backward pass, per-layer norms, vmap(grad) fallback for unknown layers)
and "vmap" (grand.py: vmap(grad) of the per-example loss), chosen with `grand_method`.
"""

from __future__ import annotations

from typing import Callable

from datadiet_jax.scores.el2n import el2n, el2n_mean, el2n_sum, l1_error
from datadiet_jax.scores.entropy import entropy
from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.scores.grand import grand, grand_head
from datadiet_jax.scores.grand_ghost import grand_ghost
from datadiet_jax.scores.input_norm import input_norm
from datadiet_jax.scores.loss import loss
from datadiet_jax.scores.margin import max_margin, sum_margin, top2_margin

_SCORE_FNS = {
    "el2n": el2n,
    "l1_error": l1_error,
    "max_margin": max_margin,
    "sum_margin": sum_margin,
    "top2_margin": top2_margin,
    "entropy": entropy,
    "loss": loss,
    "grand": grand_ghost,
    "input_norm": input_norm,
    # Text: joint EL2N variants (= el2n for plain logits) and GraNd of the classifier head.
    "el2n_sum": el2n_sum,
    "el2n_mean": el2n_mean,
    "grand_head": grand_head,
}
SCORE_NAMES = tuple(_SCORE_FNS)
FORGETTING = "forgetting"
# Accumulated by the train step over the run (train/dynamics.py), read from a checkpoint.
DYNAMICS_SCORES = ("aum", "dyn_unc", "dual", "tdds")
ALL_SCORE_NAMES = SCORE_NAMES + (FORGETTING,) + DYNAMICS_SCORES
# Scores computed from per-example gradients: heavy, so ensembles map over members
# sequentially (see ensemble.py).
GRADIENT_SCORES = frozenset({"grand", "grand_head"})
GRAND_METHODS = {"ghost": grand_ghost, "vmap": grand}
DEFAULT_GRAND_METHOD = "ghost"


def get_score_fn(name: str, grand_method: str = DEFAULT_GRAND_METHOD) -> Callable:
  """The score function `name` (one of SCORE_NAMES); raises ScoreError otherwise.

  grand_method: "ghost" or "vmap", the GraNd implementation (ignored for other scores).
  """
  if grand_method not in GRAND_METHODS:
    raise ScoreError(f"unknown GraNd method '{grand_method}'; choose one of "
                     f"{', '.join(GRAND_METHODS)}")
  if name == "grand":
    return GRAND_METHODS[grand_method]
  if name == FORGETTING:
    raise ScoreError("'forgetting' is read from a checkpoint, not computed from a model; use "
                     "datadiet_jax.scores.load_forgetting_scores(run_dir, step, num_examples)")
  if name not in _SCORE_FNS:
    raise ScoreError(f"unknown score '{name}'; choose one of {', '.join(ALL_SCORE_NAMES)}")
  return _SCORE_FNS[name]
