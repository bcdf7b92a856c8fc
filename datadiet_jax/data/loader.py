"""Training batches read ahead by grain and placed on the device ahead of the step.

The batch of every training step is a pure function of the step (data/batching.py: the
run's seed, the example ids and, under dynamic pruning, the epoch's plan). `StepFeeder`
maps that function over a segment of steps with grain, `MapDataset.range(first, last + 1)
.map(read_step)`, so the reading and decoding (an ArrayRecord read + decode of a records
data set, a gather from memory otherwise) runs ahead of the training loop:

  * in `threads` grain read threads of the training process, or
  * in `workers` grain worker processes (`mp_prefetch`): each reads and decodes whole
    batches; the training process only places them;

and `device_prefetch` batches are placed on the device (`jax.device_put`, asynchronous)
before the step that takes them. Augmentation stays in the jitted train step (keyed by
the step's `jax.random` key), so the batches, and the trained parameters, are bit-identical
whichever way they were read.

Iterator state: `StepFeeder.state()` is grain's iterator state after the last batch the
loop took (a JSON dict, with the segment and reader settings); the training loop stores it
in each checkpoint's record (Orbax), and a resumed run rebuilds the same segment and
restores it (`set_state`), then checks that the first batch it yields is the resumed step's.
A state from other reader settings (another worker count) or another segment is not
restored: the feeder then starts at the step itself (the order is a function of the step,
so the batches are the same).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import sys
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
  """How the training loop reads its batches (none of it changes a run's results).

  workers: grain worker processes reading + decoding batches (0: none).
  threads: grain read threads in the training process (ignored with workers).
  prefetch: batches each reader (a thread pool or a worker) keeps ready.
  device_prefetch: placed batches held on the device ahead of the step.
  All 0 (the default): each batch is read in the loop when its step runs.
  """

  workers: int = 0
  threads: int = 0
  prefetch: int = 2
  device_prefetch: int = 0

  def __post_init__(self):
    for name, flag in (("workers", "loader_workers"), ("threads", "loader_threads"),
                       ("device_prefetch", "device_prefetch")):
      if getattr(self, name) < 0:
        raise ValueError(f"--{flag}={getattr(self, name)}: must be >= 0")
    if self.prefetch < 1:
      raise ValueError(f"--loader_prefetch={self.prefetch}: must be >= 1")

  @property
  def reads_ahead(self) -> bool:
    """Whether batches are read ahead of their step (else the loop reads each itself)."""
    return bool(self.workers or self.threads or self.device_prefetch)

  def settings(self) -> dict:
    """What a checkpointed iterator state depends on (its reader layout)."""
    return {"workers": self.workers, "threads": self.threads}


def _grain():
  import grain  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain reads its own absl flags (defaults are fine)
    flags.FLAGS(sys.argv[:1], known_only=True)
  return grain


class StepFeeder:
  """The batches of the steps of one segment (first..last), in order, read ahead.

  read_step(step) -> (step, ids, host batch): a picklable pure function of the step (the
  workers call it). place(host batch) -> the batch the train step takes.
  """

  def __init__(self, read_step: Callable, first: int, last: int, place: Callable,
               config: LoaderConfig, start: Optional[int] = None,
               state: Optional[dict] = None):
    """Starts at step `start` (default `first`): from `state` (a `state()` of a feeder
    over the same segment's end and settings) if given and it lands there, else a fresh
    grain iterator over steps start..last."""
    self.read_step, self.place, self.config = read_step, place, config
    self.last = last
    start = first if start is None else start
    if not first <= start <= last:
      raise ValueError(f"loader: step {start} outside the segment {first}..{last}")
    self._queue: collections.deque = collections.deque()
    self._state: Optional[dict] = None
    self._iterator = None
    self.restored = False
    if state is not None and self._compatible(state, first, start):
      self._open(state["origin"], state["grain"])
      if self._peek_step() == start:
        self.restored = True
      else:
        log.warning("loader: the checkpointed iterator state does not resume at step %d; "
                    "reading from step %d instead", start, start)
        self.close()
    if not self.restored:
      self._open(start, None)

  def _compatible(self, state: dict, first: int, start: int) -> bool:
    ok = (state.get("last") == self.last and state.get("settings") == self.config.settings()
          and isinstance(state.get("origin"), int) and first <= state["origin"] <= start)
    if not ok:
      log.info("loader: not restoring a checkpointed iterator state of other settings or "
               "another segment (%s); reading from step %d", {k: state.get(k) for k in
                                                              ("origin", "last", "settings")},
               start)
    return ok

  def _open(self, origin: int, grain_state) -> None:
    """A grain iterator over steps origin..last (at `grain_state`, if given)."""
    grain = _grain()
    self.origin = origin
    dataset = grain.MapDataset.range(origin, self.last + 1).map(self.read_step)
    threads = 0 if self.config.workers else self.config.threads
    stream = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=self.config.prefetch if threads else 0))
    if self.config.workers:
      stream = stream.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.config.workers, per_worker_buffer_size=self.config.prefetch))
    self._iterator = iter(stream)
    if grain_state is not None:
      self._iterator.set_state(grain_state)
    self._queue.clear()

  def _pull(self) -> None:
    try:
      step, ids, host = next(self._iterator)
    except StopIteration:
      raise RuntimeError(f"loader: steps {self.origin}..{self.last} are all read; a step "
                         "outside its segment was asked for") from None
    state = self._iterator.get_state()
    self._queue.append((int(step), ids, self.place(host), state))

  def _peek_step(self) -> int:
    if not self._queue:
      self._pull()
    return self._queue[0][0]

  def next(self, step: int) -> tuple[Any, Any]:
    """(ids, placed batch) of `step`, which must be the segment's next step."""
    while len(self._queue) < 1 + self.config.device_prefetch and (
        not self._queue or self._queue[-1][0] < self.last):
      self._pull()
    got, ids, batch, self._state = self._queue.popleft()
    if got != step:
      raise RuntimeError(f"loader: read step {got} where step {step} was expected")
    return ids, batch

  def state(self) -> Optional[dict]:
    """The iterator state after the last batch `next` returned (None before the first)."""
    if self._state is None:
      return None
    return {"origin": self.origin, "last": self.last, "settings": self.config.settings(),
            "grain": self._state}

  def close(self) -> None:
    """Stops the reader threads / worker processes."""
    iterator, self._iterator = self._iterator, None
    self._queue.clear()
    if iterator is not None and hasattr(iterator, "close"):
      iterator.close()
