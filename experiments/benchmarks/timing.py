"""The wall-clock timer the benchmark scripts share."""

import statistics
import time


def median_ms(fn, repeats: int) -> float:
  """Median wall time in ms of `repeats` calls of fn() (which must block until its work is
  done, e.g. via jax.block_until_ready), after one untimed warm-up call (compilation)."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)
