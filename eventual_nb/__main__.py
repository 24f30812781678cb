"""``python -m eventual_nb``: the same command line as the ``eventual-nb`` console script."""

from eventual_nb.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
