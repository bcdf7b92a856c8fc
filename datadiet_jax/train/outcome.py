"""How a training run ended: ok, diverged, or failed.

A run's summary.json records one of these in `"outcome"`:

  ok        it trained to its last step and its final test loss is below chance.
  diverged  a train loss became non-finite (or an update made the parameters
            non-finite); the run stopped there. summary.json also holds
            `"diverged_step": int` (the first such step) and `"diverged_loss": float`
            (that step's train loss, NaN/Infinity as Python's json writes and reads them),
            and `"test_accuracy"`/`"test_loss"` are null.
  failed    it trained to its last step but ended at chance level: a final test loss
            >= ln C (the loss of the uniform prediction over C classes) or non-finite,
            unless its test accuracy is clearly above chance (below). Joint intent + slot
            data (S slot tags) train and test the joint loss CE(intent) + mean_t
            CE(slot_t), whose uniform prediction scores ln C + ln S.

Why accuracy can overrule the loss: a model trained on a skewed subset (e.g. the easiest
half of CIFAR-10) can be right on 40 % of the test set yet so confident on its mistakes
that its mean test loss exceeds ln C. That run learned; it is not at chance. With the
test split's label counts known (`chance_of(dataset)`), a run whose loss is >= ln C is
still "ok" if its test accuracy exceeds the accuracy of always predicting the most
frequent test label by more than Z_ABOVE_CHANCE binomial standard errors
(sqrt(p (1 - p) / n) at that accuracy p over the n test examples). A non-finite loss is
always "failed".

Sweeps and tables must show diverged/failed runs as such, never average their accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

OK, DIVERGED, FAILED = "ok", "diverged", "failed"
OUTCOMES = (OK, DIVERGED, FAILED)
Z_ABOVE_CHANCE = 3.0


def chance_loss(num_classes: int, num_tags: int = 0) -> float:
  """ln C: the cross-entropy of the uniform prediction over `num_classes` classes; with
  `num_tags` S > 0 (joint intent + slot), ln C + ln S, the joint loss of the uniform
  prediction of the intent and of every slot tag."""
  if num_classes < 2:
    raise ValueError(f"need at least 2 classes, got {num_classes}")
  return math.log(num_classes) + (math.log(num_tags) if num_tags > 0 else 0.0)


@dataclasses.dataclass(frozen=True)
class Chance:
  """Chance level of a dataset's test split.

  num_classes: C (sequence labels); num_tags: S slot tags of joint data, else 0;
  majority_share: the most frequent test label's share (the accuracy of always predicting
  it); num_test: test examples. Without label counts (majority_share None) only the loss
  rule applies.
  """

  num_classes: int
  num_tags: int = 0
  majority_share: Optional[float] = None
  num_test: int = 0

  @property
  def loss(self) -> float:
    return chance_loss(self.num_classes, self.num_tags)

  def accuracy_above(self, test_accuracy: Optional[float]) -> bool:
    """Whether test_accuracy is more than Z_ABOVE_CHANCE standard errors above the
    majority-label accuracy (False when either is unknown)."""
    if (test_accuracy is None or self.majority_share is None or self.num_test <= 0
        or not math.isfinite(test_accuracy)):
      return False
    p = self.majority_share
    return test_accuracy > p + Z_ABOVE_CHANCE * math.sqrt(p * (1 - p) / self.num_test)


def chance_of(dataset) -> Chance:
  """The Chance of a dataset (image or text: `num_classes`, `test_labels`, and `num_tags`
  for joint intent + slot data)."""
  labels = np.asarray(dataset.test_labels)
  share = float(np.bincount(labels).max() / len(labels)) if len(labels) else None
  return Chance(int(dataset.num_classes), int(getattr(dataset, "num_tags", 0) or 0), share,
                int(len(labels)))


def classify_outcome(final_test_loss: Optional[float], chance: Chance,
                     diverged: bool = False, test_accuracy: Optional[float] = None) -> str:
  """OK, DIVERGED or FAILED (see the module docstring): the loss rule against chance.loss,
  then, with the test split's label counts in `chance`, the accuracy rule."""
  if diverged:
    return DIVERGED
  if final_test_loss is None or not math.isfinite(final_test_loss):
    return FAILED
  if final_test_loss < chance.loss or chance.accuracy_above(test_accuracy):
    return OK
  return FAILED


def outcome_of_summary(summary: dict, chance: Chance) -> str:
  """The outcome of a run from its summary.json. A recorded "diverged" or "ok" stands; a
  run recorded "failed", or written before outcomes were recorded, is classified from its
  test loss and test accuracy (summaries written before the accuracy rule existed are
  read by today's rule)."""
  if summary.get("outcome") in (DIVERGED, OK):
    return summary["outcome"]
  loss, accuracy = summary.get("test_loss"), summary.get("test_accuracy")
  return classify_outcome(None if loss is None else float(loss), chance,
                          test_accuracy=None if accuracy is None else float(accuracy))


def divergence_message(desc: str, step: int, loss: float, learning_rate: float) -> str:
  """The one line shown when a run diverges: where, the loss, and what to try."""
  return (f"{desc}: diverged at step {step} (train loss {float(loss)}); stopped there, "
          f"nothing after step {step} was saved. Try a lower --lr (now {learning_rate:g}) or "
          "a learning-rate warm-up")


def failed_message(desc: str, test_loss: float, chance: Chance,
                   test_accuracy: Optional[float] = None) -> str:
  text = f"ln {chance.num_classes}" + (f" + ln {chance.num_tags}" if chance.num_tags > 0
                                       else "")
  accuracy = ""
  if test_accuracy is not None and chance.majority_share is not None:
    accuracy = (f", test accuracy {100 * float(test_accuracy):.2f} % not clearly above the "
                f"majority label's {100 * chance.majority_share:.2f} %")
  return (f"{desc}: failed: final test loss {float(test_loss):.4f} >= {text} = "
          f"{chance.loss:.4f} (chance level){accuracy}; train longer or with another --lr")
