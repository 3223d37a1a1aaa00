"""Helpers shared by the examples: the fast-mode switch and a clear exit for missing features."""

from __future__ import annotations

import argparse
import os
import sys

#: Set to 1 to run every example in its fast mode (what tests/test_examples.py does).
FAST_ENV = "SPARSEKIT_EXAMPLES_FAST"

#: Exit status of an example whose feature or data is not available here.
EXIT_UNAVAILABLE = 3


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--fast`` flag every example has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--fast", action="store_true", default=os.environ.get(FAST_ENV) == "1",
                   help=f"a small, quick run (also with {FAST_ENV}=1)")
    return p


def unavailable(reason: str) -> None:
    """Stop with a clear message (and status 3) when a feature or dataset is missing."""
    print(f"example skipped: {reason}", file=sys.stderr)
    raise SystemExit(EXIT_UNAVAILABLE)


def fashion_mnist(data_dir=None):
    """Fashion-MNIST (:func:`sparsekit.load_dataset`), or a clear exit when it is not here."""
    import sparsekit

    try:
        return sparsekit.load_dataset("fashion-mnist", data_dir=data_dir)
    except FileNotFoundError as exc:
        unavailable(str(exc))
