"""`python -m benchmarks [--quick] [--json PATH] [--only NAME ...]`: run the benchmarks, print a table.

Targets are shown next to each number but never enforced: the exit status is 0 whenever every
benchmark ran and its sanity checks (results, replay counts, virtual time) held.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import engine
from benchmarks.results import environment, make_console, print_header, print_notes, render, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; finishes in a few seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(engine.BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(engine.BENCHMARKS)}",
    )
    args = parser.parse_args(argv)

    console = make_console()
    env = environment()
    print_header(console, env, args.quick)
    with console.status("running benchmarks…") as status:
        results = engine.run(args.quick, args.only, lambda key: status.update(f"running {key}…"))
    console.print(render(results))
    print_notes(console, results)
    if args.json:
        write_json(args.json, env, args.quick, results)
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
