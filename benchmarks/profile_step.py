"""`python -m benchmarks.profile_step [--runs N] [--steps S] [--top K] [--sort tottime|cumtime|ncalls]`: where the CPU
of a step goes.

Runs the `local_latency` workflow (one execution of S no-op activity steps, on a LocalRuntime with
`durability="full"` in a temporary directory) N times under cProfile with process CPU time as its clock, so
waiting on the disk does not count, and prints the CPU per step and the top K frames. It is the tool behind
the hot-path work (what is not the engine's work: serialisation, event-loop round trips, allocations); it
measures nothing the benchmark table reports, and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import local


async def profile(runs: int, steps: int, top: int, sort: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with local._runtime(Path(directory), "full") as runtime:
            for _ in range(3):  # warm-up: definitions looked up, connections open, caches filled
                await local.bench_steps(steps)
            profiler = cProfile.Profile(time.process_time)
            cpu = time.process_time()
            profiler.enable()
            for _ in range(runs):
                result = await local.bench_steps(steps)
                if result != local.expected_sum(steps):
                    raise SystemExit(f"a run returned {result}, expected {local.expected_sum(steps)}")
            profiler.disable()
            cpu = time.process_time() - cpu
            print(
                f"{runs} runs × {steps} steps on LocalRuntime (durability=full, {runtime.commits} commits): "
                f"{cpu / runs * 1e3:.2f} ms CPU per run, {cpu / (runs * steps) * 1e6:.0f} µs per step "
                "(under cProfile, which adds its own overhead)"
            )
            pstats.Stats(profiler, stream=sys.stdout).sort_stats(sort).print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="executions to profile (default 200)")
    parser.add_argument("--steps", type=int, default=10, help="activity steps per execution (default 10)")
    parser.add_argument("--top", type=int, default=30, help="frames to print (default 30)")
    parser.add_argument(
        "--sort",
        choices=["tottime", "cumtime", "ncalls"],
        default="tottime",
        help="order of the frames: own time, time with callees, or calls (default tottime)",
    )
    args = parser.parse_args(argv)
    asyncio.run(profile(args.runs, args.steps, args.top, args.sort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
