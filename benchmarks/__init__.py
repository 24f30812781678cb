"""eventual-nb benchmarks: `python -m benchmarks` (or `make bench`).

Each benchmark returns a `Result` with plain numbers; `__main__` prints them as a rich table and can
write them as JSON (`--json PATH`). Benchmarks report absolute numbers and the target each one is
meant to meet; they never assert timings (DESIGN §8) — the smoke test checks only behavioural facts
(replay counts, virtual time) of a `--quick` run.

* `engine` — the replay engine and the in-memory TestEnvironment: durable timers, replay of a long
  history from scratch, cached instances (O(n)) against replay-every-step (O(n²)).
"""

from benchmarks.results import Metric, Result

__all__ = ["Metric", "Result"]
