"""The machine description every benchmark writes next to its figures, and the plumbing the
benchmarks that run engines in turns share (options, report header, child processes)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[str] | None:
    """The 1/5/15-minute load averages (the machine may be shared: quote them with timings)."""
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.exists() else None


def describe() -> dict:
    """CPU model, cores, Python version and current load average."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg": load_average()}


def run_header(report: dict) -> list[str]:
    """The command and machine lines of a torch-peer report (``report`` holds ``command``,
    ``date``, ``machine`` from :func:`describe`, ``torch`` and ``loadavg_after``)."""
    m = report["machine"]
    return [f"Command: `{report['command']}` ({report['date']}).", "",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch "
            f"{report.get('torch', '?')}; load average {m['loadavg']} before the run, "
            f"{report['loadavg_after']} after.", ""]


def generated_header(report: dict) -> list[str]:
    """The command and machine lines of a generated table (``report`` holds ``command``,
    ``date``, ``machine`` from :func:`describe` and ``loadavg_after``)."""
    m = report["machine"]
    return [f"Command: `{report['command']}` ({report['date']}).", "",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average "
            f"{m['loadavg']} before, {report['loadavg_after']} after.", ""]


def rounds_cell(values: list[float], fmt: str) -> str:
    """A table cell: the median of ``values``, then each of them, in brackets."""
    return (f"{fmt.format(statistics.median(values))} "
            f"({', '.join(fmt.format(v) for v in values)})")


def save_report(out: Path, stem: str, report: dict, render: Callable[[dict], str]) -> None:
    """Stamp ``report`` with the load average after the run and write ``out/stem.json`` and
    ``out/stem.md`` (``render(report)``)."""
    report["loadavg_after"] = load_average()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(render(report))


def turns_parser(doc: str, turns: int) -> argparse.ArgumentParser:
    """The options of a benchmark that runs engines in turns, round after round."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--turns", type=int, default=turns, help="turns of 20 steps per engine")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return p


def new_report(script: str, argv) -> dict:
    """A report's command, date and machine, with ``runs`` still empty."""
    return {"command": " ".join([f"python benchmarks/{script}",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": describe(), "runs": []}


def child_json(code: str, *args) -> dict:
    """Run ``code`` in a fresh interpreter at the repository root; its last line, as JSON."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True,
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])
