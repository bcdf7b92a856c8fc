"""Per-example scores of training examples: EL2N, GraNd, margins, entropy, loss, input
norm and forgetting.

Every model-based score is a function `(apply_fn, variables, images, labels) -> f32[B]`
of the eval-mode model (`eval_apply_fn(model)`: BatchNorm uses running statistics),
normalized images f32[B, H, W, C] and labels i32[B]; `get_score_fn(name)` selects one.
GraNd defaults to ghost norms (one backward pass; `grand_method="vmap"` for vmap(grad)).
`score_ensemble` scores a whole dataset under R models (runs or inits) in one jitted
function; `grand_at_init` draws the R inits itself. `save_scores` / `load_scores` write
and read score files (also the original code's layout).
"""

from datadiet_jax.scores._common import ApplyFn, eval_apply_fn
from datadiet_jax.scores.checkpoints import load_stacked_variables, load_variables
from datadiet_jax.scores.el2n import el2n, el2n_mean, el2n_sum, joint_el2n, l1_error
from datadiet_jax.scores.ensemble import (DEFAULT_BATCH_SIZE, grand_at_init,
                                          init_stacked_variables, make_ensemble_score_fn,
                                          score_ensemble)
from datadiet_jax.scores.entropy import entropy
from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.scores.forgetting import (load_forget_stats, load_forgetting_scores,
                                            mean_forgetting_scores)
from datadiet_jax.scores.grand import grand, grand_head, grand_jacrev, per_example_grads
from datadiet_jax.scores.grand_ghost import grand_ghost, per_example_sq_grad_norms
from datadiet_jax.scores.input_norm import input_norm
from datadiet_jax.scores.io import (available_steps, canonical_score_name, find_scores,
                                    load_score_record, load_scores, save_scores)
from datadiet_jax.scores.loss import cross_entropy, loss
from datadiet_jax.scores.margin import max_margin, sum_margin, top2_margin
from datadiet_jax.scores.registry import (ALL_SCORE_NAMES, GRAND_METHODS, SCORE_NAMES,
                                          get_score_fn)

__all__ = [
    "ALL_SCORE_NAMES", "ApplyFn", "DEFAULT_BATCH_SIZE", "SCORE_NAMES", "ScoreError",
    "available_steps", "canonical_score_name", "cross_entropy", "el2n", "el2n_mean",
    "el2n_sum", "entropy", "eval_apply_fn", "find_scores", "get_score_fn", "grand",
    "grand_at_init", "grand_ghost", "grand_head", "grand_jacrev", "GRAND_METHODS", "joint_el2n",
    "init_stacked_variables", "input_norm", "l1_error", "load_forget_stats",
    "load_forgetting_scores", "load_score_record", "load_scores", "load_stacked_variables",
    "load_variables", "loss", "make_ensemble_score_fn", "max_margin", "mean_forgetting_scores",
    "per_example_grads", "per_example_sq_grad_norms", "save_scores", "score_ensemble",
    "sum_margin", "top2_margin",
]
