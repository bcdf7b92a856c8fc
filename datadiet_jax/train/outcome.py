"""How a training run ended: ok, diverged, or failed.

A run's summary.json records one of these in `"outcome"`:

  ok        it trained to its last step and its final test loss is below chance.
  diverged  a train loss became non-finite (or an update made the parameters
            non-finite); the run stopped there. summary.json also holds
            `"diverged_step": int` (the first such step) and `"diverged_loss": float`
            (that step's train loss, NaN/Infinity as Python's json writes and reads them),
            and `"test_accuracy"`/`"test_loss"` are null.
  failed    it trained to its last step but ended at chance level: a final test loss
            >= ln C (the loss of the uniform prediction over C classes) or non-finite.
            Joint intent + slot data (S slot tags) train and test the joint loss
            CE(intent) + mean_t CE(slot_t), whose uniform prediction scores ln C + ln S.

Sweeps and tables must show diverged/failed runs as such, never average their accuracy.
"""

from __future__ import annotations

import math
from typing import Optional

OK, DIVERGED, FAILED = "ok", "diverged", "failed"
OUTCOMES = (OK, DIVERGED, FAILED)


def chance_loss(num_classes: int, num_tags: int = 0) -> float:
  """ln C: the cross-entropy of the uniform prediction over `num_classes` classes; with
  `num_tags` S > 0 (joint intent + slot), ln C + ln S, the joint loss of the uniform
  prediction of the intent and of every slot tag."""
  if num_classes < 2:
    raise ValueError(f"need at least 2 classes, got {num_classes}")
  return math.log(num_classes) + (math.log(num_tags) if num_tags > 0 else 0.0)


def classify_outcome(final_test_loss: Optional[float], num_classes: int,
                     diverged: bool = False, num_tags: int = 0) -> str:
  """OK, DIVERGED or FAILED (see the module docstring)."""
  if diverged:
    return DIVERGED
  if final_test_loss is None or not math.isfinite(final_test_loss):
    return FAILED
  return FAILED if final_test_loss >= chance_loss(num_classes, num_tags) else OK


def outcome_of_summary(summary: dict, num_classes: int, num_tags: int = 0) -> str:
  """The outcome of a run from its summary.json (also ones written before outcomes were
  recorded: classified from their test loss)."""
  if summary.get("outcome") in OUTCOMES:
    return summary["outcome"]
  loss = summary.get("test_loss")
  return classify_outcome(None if loss is None else float(loss), num_classes,
                          num_tags=num_tags)


def divergence_message(desc: str, step: int, loss: float, learning_rate: float) -> str:
  """The one line shown when a run diverges: where, the loss, and what to try."""
  return (f"{desc}: diverged at step {step} (train loss {float(loss)}); stopped there, "
          f"nothing after step {step} was saved. Try a lower --lr (now {learning_rate:g}) or "
          "a learning-rate warm-up")


def failed_message(desc: str, test_loss: float, num_classes: int, num_tags: int = 0) -> str:
  chance = f"ln {num_classes}" + (f" + ln {num_tags}" if num_tags > 0 else "")
  return (f"{desc}: failed: final test loss {float(test_loss):.4f} >= {chance} = "
          f"{chance_loss(num_classes, num_tags):.4f} (chance level); train longer or with "
          "another --lr")
