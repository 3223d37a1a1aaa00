"""``python -m sparsekit.bench <suite> [args]``: run a benchmark suite of the source checkout."""

from __future__ import annotations

import sys

from . import SUITES, run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUITES:
        print(f"usage: python -m sparsekit.bench {{{','.join(SUITES)}}} [--quick] [...]\n"
              "  kernels  CPU kernels vs SciPy, torch and dense NumPy "
              "(writes benchmarks/results/cpu-kernels.md)\n"
              "Pass --help after the suite name for its options.", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
