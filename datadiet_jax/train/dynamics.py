"""Training-dynamics scores accumulated by the train step, beside forgetting.

AUM (scores/aum.py), Dyn-Unc (scores/dyn_unc.py), DUAL (scores/dual.py) and TDDS
(scores/tdds.py) need every visit of an example during training, not one model. Each is an
on-device accumulator `update(state, example_ids, logits, labels)`; here they ride in the
train step's second carry with the forgetting statistics (`Tracked`), updated in the same
jitted program from the step's train-mode logits (augmented inputs, before the update, as
forgetting), and saved with every checkpoint (its own Orbax item, "dynamics"), so a resumed
run continues them exactly and any checkpoint step can be scored (DUAL scores early: the
state saved at that epoch's checkpoint).

Orientation of what `dynamics_scores` returns, as every score file here: higher = harder /
kept by keep_hardest. Dyn-Unc, DUAL and TDDS are that way round in their papers; AUM is
"high = easy", so its score is -AUM (the negated mean margin: mislabeled examples, with
negative margins, score high).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.struct
import jax
import numpy as np

from datadiet_jax.scores import aum, dual, dyn_unc, tdds
from datadiet_jax.scores.registry import DYNAMICS_SCORES
from datadiet_jax.train.forgetting import ForgetStats, init_forget_stats, update_forget_stats

DEFINITIONS = {
    "aum": "-AUM: minus the mean logit margin z_y - max_{c!=y} z_c over the example's visits "
           "(Pleiss et al. 2020, Eq. 1-2; negated so that higher = harder)",
    "dyn_unc": "Dyn-Unc: mean over sliding windows of visits of the std of the true-class "
               "probability (He et al. 2023, Eq. 2-3)",
    "dual": "DUAL: mean over windows of std(p_y) x (1 - mean(p_y)) (Cho et al. 2025)",
    "tdds": "TDDS: EMA over windows of the spread of consecutive-visit KL-type differences "
            "(Zhang et al. 2024; the authors' importance_evaluation.py)",
}


@flax.struct.dataclass
class Tracked:
  """The train step's per-example statistics besides the state.

  forget: ForgetStats, or None (forgetting not tracked); dynamics: {name: accumulator
  state} of DYNAMICS_SCORES (each a pytree of f32/i32[N...] arrays).
  """

  forget: Optional[ForgetStats]
  dynamics: dict


def check_names(names: Sequence[str], window: int = 10) -> tuple:
  """`names` without repeats, after checking each is a dynamics score and `window` fits."""
  unknown = [n for n in names if n not in DYNAMICS_SCORES]
  if unknown:
    raise ValueError(f"--track_dynamics: unknown {unknown}; choose from "
                     f"{', '.join(DYNAMICS_SCORES)}")
  if "tdds" in names and window < 3:
    raise ValueError(f"--dynamics_window={window} with tdds: a TDDS window of K visits holds "
                     "K-1 differences, so K must be >= 3")
  return tuple(dict.fromkeys(names))


def check_tracked(score_names: Sequence[str], tracked: Sequence[str], flag: str) -> None:
  """Raises ValueError if a training-dynamics score among `score_names` (flag `flag`) is not
  tracked by the runs that would produce it (`tracked`: their --track_dynamics)."""
  missing = [n for n in score_names if n in DYNAMICS_SCORES and n not in tracked]
  if missing:
    names = ",".join(dict.fromkeys([*tracked, *missing]))
    raise ValueError(f"{flag} names {', '.join(missing)}, accumulated while the runs train: "
                     f"add --track_dynamics={names} so the runs track them")


def init_tracked(num_examples: int, num_classes: int, track_forgetting: bool,
                 names: Sequence[str] = (), window: int = 10):
  """ForgetStats (or None) when no dynamics are tracked, as before; else a Tracked."""
  forget = init_forget_stats(num_examples) if track_forgetting else None
  names = check_names(names)
  if not names:
    return forget
  init = {"aum": lambda: aum.init_aum(num_examples),
          "dyn_unc": lambda: dyn_unc.init_dyn_unc(num_examples, window),
          "dual": lambda: dual.init_dual(num_examples, window),
          "tdds": lambda: tdds.init_tdds(num_examples, num_classes, window)}
  return Tracked(forget=forget, dynamics={name: init[name]() for name in names})


_UPDATE = {"aum": aum.update_aum, "dyn_unc": dyn_unc.update_dyn_unc, "dual": dual.update_dual,
           "tdds": tdds.update_tdds}


def update_tracked(tracked, metrics: dict):
  """The statistics after one train step; metrics: the step's example_ids i32[B], correct
  bool[B], logits f32[B, C] and labels i32[B]."""
  ids = metrics["example_ids"]
  if isinstance(tracked, ForgetStats):
    return update_forget_stats(tracked, ids, metrics["correct"])
  forget = (None if tracked.forget is None
            else update_forget_stats(tracked.forget, ids, metrics["correct"]))
  return Tracked(forget=forget, dynamics={
      name: _UPDATE[name](state, ids, metrics["logits"], metrics["labels"])
      for name, state in tracked.dynamics.items()})


def forget_of(tracked) -> Optional[ForgetStats]:
  return tracked.forget if isinstance(tracked, Tracked) else tracked


_SCORE = {"aum": lambda state: -aum.aum_score(state), "dyn_unc": dyn_unc.dyn_unc_score,
          "dual": dual.dual_score, "tdds": tdds.tdds_score}
_STATE = {"aum": aum.AUMState, "dyn_unc": dyn_unc.DynUncState, "dual": dual.DUALState,
          "tdds": tdds.TDDSState}


def dynamics_scores(tracked) -> dict:
  """{name: f32[N]} of the tracked dynamics scores (higher = harder; NaN: too few visits)."""
  if not isinstance(tracked, Tracked):
    return {}
  return {name: score_of(name, state) for name, state in tracked.dynamics.items()}


def score_of(name: str, state) -> np.ndarray:
  """f32[N] score `name` of its accumulator state."""
  return np.asarray(jax.device_get(_SCORE[name](state)), np.float32)


def typed_dynamics(raw: dict) -> dict:
  """{name: accumulator state} from a checkpoint's dynamics item read as saved (dicts)."""
  return {name: _STATE[name](**fields) for name, fields in raw.items()}
