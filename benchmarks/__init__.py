"""eventual-nb benchmarks: `python -m benchmarks` (or `make bench`).

Each benchmark returns a `Result` with plain numbers; `__main__` prints them as a rich table and can
write them as JSON (`--json PATH`). Benchmarks report absolute numbers and the target each one is
meant to meet; they never assert timings — the smoke test checks only behavioural facts
(replay counts, virtual time) of a `--quick` run.

* `engine` — the replay engine and the in-memory TestEnvironment: durable timers, replay of a long
  history from scratch, cached instances (O(n)) against replay-every-step (O(n²)).
* `local` — `LocalRuntime` against DBOS, both on SQLite with every commit fsynced: steps per second
  of 200 concurrent 10-activity workflows, p50/p90 latency of one 10-step workflow, and the RSS of a
  runtime holding 10,000 completed executions. Each measurement runs in its own process; DBOS is
  optional (the `bench` extra) and reported as "not installed" without it.
"""

from benchmarks.results import Comparison, Metric, Result, Row

__all__ = ["Comparison", "Metric", "Result", "Row"]
