"""`python -m benchmarks [--quick] [--json PATH] [--only NAME ...]`: run the benchmarks, print a table.

Targets are shown next to each number but never enforced: the exit status is 0 whenever every
benchmark ran and its sanity checks (results, replay counts, virtual time) held.

Engine benchmarks (`benchmarks.engine`) come first, then LocalRuntime against DBOS (`benchmarks.local`,
each measurement in its own process; DBOS columns read "not installed" without the `bench` extra), then
the kernel extension in real ipykernel processes (`benchmarks.kernel`: `%load_ext` time, widget latency),
then the AWS runtime's requests and list-price cost per activity step on moto (`benchmarks.aws`, `--only aws`),
then the execution timeline's build and draw times by history length (`benchmarks.timeline`), then entity
operations per second on the LocalRuntime and requests and cost per entity operation on AWS
(`benchmarks.entities`), then the local event bus between two processes (`benchmarks.bus`: delivery latency
p50/p99, events per second, the subscriber's CPU while idle), then how the LocalRuntime's costs grow with the
work it holds, each at three sizes (`benchmarks.scale`: executions in flight, stored executions listed by
workflow and status, a long history replayed, a burst of starts through `eventual-nb serve`, and new work
beside 100,000 waiting).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks import aws, bus, engine, entities, kernel, local, scale, schedules, timeline
from benchmarks.results import (
    Comparison,
    Result,
    environment,
    make_console,
    print_footers,
    print_header,
    print_notes,
    render,
    render_comparisons,
    write_json,
)

NAMES = [
    *engine.BENCHMARKS,
    *local.BENCHMARKS,
    *schedules.BENCHMARKS,
    *kernel.BENCHMARKS,
    *aws.BENCHMARKS,
    *timeline.BENCHMARKS,
    *entities.BENCHMARKS,
    *scale.BENCHMARKS,
    *bus.BENCHMARKS,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (about half a minute; DBOS only if installed)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--only",
        action="append",
        choices=NAMES,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(NAMES)}",
    )
    args = parser.parse_args(argv)

    console = make_console()
    env = environment()
    print_header(console, env, args.quick)
    only = set(args.only or NAMES)
    with console.status("running benchmarks…") as status:

        def progress(key: str) -> None:
            status.update(f"running {key}…")

        def run(module: Any) -> list[Any]:
            chosen = sorted(only & set(module.BENCHMARKS))
            return list(module.run(args.quick, chosen, progress)) if chosen else []

        results = run(engine)
        comparisons = run(local)
        schedule_results = run(schedules)
        kernel_results = run(kernel)
        aws_results = run(aws)
        timeline_results = run(timeline)
        entity_results = run(entities)
        scale_results = run(scale)
        bus_results = run(bus)
    if results:
        console.print(render(results))
        print_notes(console, results)
    if comparisons:
        console.print(render_comparisons(comparisons))
        print_footers(console, comparisons)
        print_notes(console, comparisons)
    if schedule_results:
        table = render(schedule_results)
        table.title = "LocalRuntime schedules: every-minute fires over a simulated hour (no peer; absolute numbers)"
        console.print(table)
        print_notes(console, schedule_results)
    if kernel_results:
        table = render(kernel_results)
        table.title = "kernel extension in a real ipykernel (no peer; absolute numbers)"
        console.print(table)
        print_notes(console, kernel_results)
    aws_comparisons = [item for item in aws_results if isinstance(item, Comparison)]
    aws_plain = [item for item in aws_results if isinstance(item, Result)]
    if aws_comparisons:
        table = render_comparisons(aws_comparisons)
        table.title = "AWS runtime on moto: requests and us-east-1 list-price cost per activity step"
        console.print(table)
        print_footers(console, aws_comparisons)
        print_notes(console, aws_comparisons)
    if aws_plain:
        table = render(aws_plain)
        table.title = "AWS runtime on moto: one execution with timers and a signal"
        console.print(table)
        print_notes(console, aws_plain)
    if timeline_results:
        table = render(timeline_results)
        table.title = "execution timeline: build and draw (no peer; absolute numbers)"
        console.print(table)
        print_notes(console, timeline_results)
    for result in entity_results:
        table = render([result])
        table.title = f"{result.title} (no peer; absolute numbers)"
        console.print(table)
        print_notes(console, [result])
    for comparison in scale_results:
        table = render_comparisons([comparison])
        table.title = f"scale: {comparison.title} (one column per size)"
        console.print(table)
        print_notes(console, [comparison])
    if bus_results:
        table = render(bus_results)
        table.title = "local event bus across processes (no peer; absolute numbers)"
        console.print(table)
        print_notes(console, bus_results)
    if args.json:
        write_json(
            args.json,
            env,
            args.quick,
            [
                *results,
                *comparisons,
                *schedule_results,
                *kernel_results,
                *aws_results,
                *timeline_results,
                *entity_results,
                *scale_results,
                *bus_results,
            ],
        )
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
