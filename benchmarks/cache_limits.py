"""The memory limits behind the CPU kernels' figures, measured on this machine.

Compiles ``cache_limits.c`` with the system C compiler (``$CC``, else ``cc``) and reports:

- **read bandwidth** of one core by working-set size: which level serves a product's gathered
  rows (at batch 128 each non-zero reads a 512-byte row of the operand, so a 1000-row operand,
  512 KiB, lives in L2 and a 1 000 000-row one in memory);
- **gather** bandwidth: 512-byte rows read in a random order from a 512 MiB buffer, the access
  of a layer of a million neurons;
- **hand-off** between two cores: the time for one core to read a buffer the other core has
  just written (what each phase of a 2-thread training step does with the previous phase's
  output), against the same core reading a buffer it wrote itself;
- **shared gathers**: both cores gathering rows from one 512 KiB buffer at once, against each
  from its own copy (the two threads of a product share its operand);
- **phases**: the two cores taking turns as a 2-thread step's phases do, each writing half of a
  layer's output and then gathering rows from all of it, against gathering from an output that
  is not rewritten.

Reproduce (quiet machine)::

    flock /tmp/bench.lock python benchmarks/cache_limits.py --out benchmarks/results/xeon

Results: ``DIR/cache-limits.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _machine import describe, generated_header, load_average

HERE = Path(__file__).resolve().parent


def build(tmp: Path) -> Path:
    """The probe, compiled for this CPU (``-march=native`` where the compiler takes it)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("cache_limits.py: no C compiler found (set CC)")
    exe = tmp / "cache_limits"
    base = [cc, "-O2", "-pthread", str(HERE / "cache_limits.c"), "-o", str(exe)]
    for extra in (["-march=native"], []):
        if subprocess.run(base + extra, capture_output=True).returncode == 0:
            return exe
    raise SystemExit("cache_limits.py: the probe does not compile: "
                     + subprocess.run(base, capture_output=True, text=True).stderr.strip())


def report(rows: list[dict], command: str, machine: dict) -> str:
    reads = [r for r in rows if r["kind"] == "read"]
    hands = [r for r in rows if r["kind"] == "handoff"]
    lines = ["## Memory limits of this machine (generated)", ""]
    lines += generated_header({"command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                               "machine": machine, "loadavg_after": load_average()})
    lines += ["One core reading a buffer of the given size over and over (64-byte vector loads,"
              " best of 5 runs):", "",
              "| working set | GB/s | one 512-byte row (batch 128, float32) |",
              "|---:|---:|---:|"]
    for r in reads:
        ns = 512 / r["gb_per_s"]
        lines.append(f"| {r['bytes'] >> 10:,} KiB | {r['gb_per_s']:.1f} | {ns:.2f} ns |")
    for r in (r for r in rows if r["kind"] == "gather"):
        lines += ["", f"512-byte rows gathered in a random order from a {r['bytes'] >> 20:,} MiB "
                  f"buffer (one core, 8 rows in flight): **{r['gb_per_s']:.1f} GB/s**, "
                  f"{512 / r['gb_per_s']:.2f} ns a row."]
    if hands:
        lines += ["", "One core reading a buffer another core has just written, against a "
                  "buffer it wrote itself (mean of 200 hand-offs):", "",
                  "| buffer | written by the other core | by the same core | ratio |",
                  "|---:|---:|---:|---:|"]
        for r in hands:
            kib = r["bytes"] >> 10
            other = r["bytes"] / r["other_core_us"] / 1e3
            own = r["bytes"] / r["own_core_us"] / 1e3
            lines.append(f"| {kib:,} KiB | {r['other_core_us']:.1f} us ({other:.1f} GB/s) | "
                         f"{r['own_core_us']:.1f} us ({own:.1f} GB/s) | "
                         f"{r['other_core_us'] / r['own_core_us']:.1f}x |")
    for r in (r for r in rows if r["kind"] == "shared_gather"):
        own, one = r["own_copies_ns"], r["one_copy_ns"]
        lines += ["", f"Both cores gathering 512-byte rows from a {r['bytes'] >> 10:,} KiB buffer "
                  f"at once (ns a row, each core): one core alone {r['alone_ns']:.2f}; each from "
                  f"its own copy {own[0]:.2f} / {own[1]:.2f}; both from the same copy "
                  f"**{one[0]:.2f} / {one[1]:.2f}** ({sum(one) / sum(own):.2f}x own copies)."]
    for r in (r for r in rows if r["kind"] == "phases"):
        lines += ["", f"Phases of a 2-thread step: each core writes half of a {r['bytes'] >> 10:,} "
                  f"KiB layer output, then gathers {r['gathers']:,} rows at random from all of it "
                  f"(µs a phase, core 0): the gathers take {r['static_gather_us']:.1f} when the "
                  f"output is not rewritten and **{r['rewritten_gather_us']:.1f}** when it is "
                  f"(half its rows then come from the other core); writing the half takes "
                  f"{r['rewritten_write_us']:.1f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="folder for cache-limits.{md,json}")
    args = ap.parse_args(argv)
    command = "python benchmarks/cache_limits.py" + (
        f" --out {args.out}" if args.out != HERE / "results" else "")
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="sparsekit-cache-") as tmp:
        exe = build(Path(tmp))
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    md = report(rows, command, machine)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache-limits.md").write_text(md)
    (args.out / "cache-limits.json").write_text(json.dumps(
        {"command": command, "machine": machine, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
