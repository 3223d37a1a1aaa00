"""Epoch records: the result of a run, the one-line summary, and the history files."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.runfolder import write_text_atomic

CHECKPOINT = "checkpoint.npz"


@dataclass
class TrainResult:
    """The trained model, one history record per epoch, and the run folder (if any)."""

    model: Any  # a SparseMLP
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None

    def to_json(self) -> str:
        """The history as a JSON document."""
        return json.dumps(self.history, indent=1)


def format_record(r: dict) -> str:
    """One summary line for an epoch record."""
    test = (f" test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%"
            if "test_acc" in r else "")
    return (f"epoch {r['epoch']:>3}  train loss {r['train_loss']:.4f} acc "
            f"{100 * r['train_acc']:.2f}%{test}  [{r['time_train']:.2f}s train, "
            f"{r['time_evolve']:.2f}s evolve, {r['time_eval']:.2f}s eval]  "
            f"connections {sum(r['connections'])}  neurons {r['neurons'][1:-1]}")


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``history.json`` and a flat ``history.csv`` (list fields become ``name_i`` columns)."""
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / "history.json", json.dumps(history, indent=1))
    flat = []
    for record in history:
        row: dict = {}
        for key, value in record.items():
            if isinstance(value, list):
                row.update({f"{key}_{i}": v for i, v in enumerate(value)})
            else:
                row[key] = value
        flat.append(row)
    keys = list(dict.fromkeys(k for row in flat for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(flat)
    write_text_atomic(run_dir / "history.csv", text.getvalue())
