"""``python -m cnflow ...``: the command line, :func:`cnflow.cli.main`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
