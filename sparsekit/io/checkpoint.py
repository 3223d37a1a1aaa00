"""Pickle-free, atomic, checksummed checkpoints.

A checkpoint is an ``.npz`` archive of plain numeric arrays — per layer its CSR arrays, bias and
the optimizer's state slots (``layer{i}_w_{slot}``, ``layer{i}_b_{slot}``) — plus one UTF-8 JSON document (model configuration, training state, RNG state,
history) stored as a byte array, and a SHA-256 over everything.  It is written to a temporary
file in the same folder, flushed to disk, then renamed over the old one, so a run killed at any
moment leaves either the previous checkpoint or the new one, never half of one.  It loads with
``allow_pickle=False`` on either backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..nn.csr import CSR

FORMAT = "sparsekit-checkpoint"
VERSION = 2
#: Versions :func:`load_checkpoint` reads; version 1 stored momentum as ``vel_w``/``vel_b``.
READABLE = (1, 2)
_LAYER_KEYS = ("indptr", "indices", "data", "bias")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: the model and the training state saved with it."""

    model: Any
    train_state: dict = field(default_factory=dict)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(path, model, train_state: dict | None = None) -> Path:
    """Atomically write ``model`` (and optional ``train_state``, JSON-serialisable) to ``path``."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    be = model.backend
    arrays: dict[str, np.ndarray] = {}
    slots = list(model.layers[0].state_w)
    for i, layer in enumerate(model.layers):
        if list(layer.state_w) != slots:
            raise ValueError("every layer must hold the same optimizer slots")
        parts = (layer.w.indptr, layer.w.indices, layer.w.data, layer.b)
        for key, arr in zip(_LAYER_KEYS, parts):
            arrays[f"layer{i}_{key}"] = be.to_numpy(arr)
        for slot in slots:
            arrays[f"layer{i}_w_{slot}"] = be.to_numpy(layer.state_w[slot])
            arrays[f"layer{i}_b_{slot}"] = be.to_numpy(layer.state_b[slot])
    meta = {"format": FORMAT, "version": VERSION, "model": model.config(), "slots": slots,
            "shapes": [list(layer.w.shape) for layer in model.layers],
            "train_state": train_state or {}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays["checksum"] = np.frombuffer(_digest(arrays).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    return path


def load_checkpoint(path, backend=None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` onto ``backend``.

    Raises ``ValueError`` with the file name for a truncated, corrupt or modified file, and
    ``FileNotFoundError`` when it does not exist.
    """
    from ..backends import get_backend
    from ..nn.layers import SparseLayer
    from ..nn.model import SparseMLP

    path = Path(path)
    if not path.exists() and path.with_suffix(".npz").exists():
        path = path.with_suffix(".npz")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({exc})") from None
    if "meta" not in arrays or "checksum" not in arrays:
        raise ValueError(f"{path} is not a sparsekit checkpoint (no meta/checksum)")
    stored = arrays.pop("checksum").tobytes().decode(errors="replace")
    if _digest(arrays) != stored:
        raise ValueError(f"checkpoint {path} is corrupt or was modified (checksum mismatch)")
    try:
        meta = json.loads(arrays["meta"].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"checkpoint {path} has an unreadable header ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')} "
                         f"v{meta.get('version')}")
    cfg = dict(meta["model"])
    cfg.pop("layer_sizes", None)
    cfg.pop("seed", None)
    dtype = cfg.pop("dtype", "float32")
    be = get_backend(backend)
    version = meta["version"]
    # Version 1 held momentum SGD's velocity as vel_w/vel_b: the "momentum" slot now.
    slots = meta.get("slots", []) if version >= 2 else ["momentum"]
    names = ({s: (f"w_{s}", f"b_{s}") for s in slots} if version >= 2
             else {"momentum": ("vel_w", "vel_b")})
    layers = []
    for i, shape in enumerate(meta["shapes"]):
        try:
            a = {key: arrays[f"layer{i}_{key}"] for key in _LAYER_KEYS}
            st = {s: (arrays[f"layer{i}_{kw}"], arrays[f"layer{i}_{kb}"])
                  for s, (kw, kb) in names.items()}
        except KeyError as exc:
            raise ValueError(f"checkpoint {path} lacks array {exc}") from None
        try:
            w = CSR(be.asarray(a["indptr"]), be.asarray(a["indices"]),
                    be.asarray(a["data"], dtype=dtype), tuple(shape))
            layer = SparseLayer(w, a["bias"], backend=be)
        except ValueError as exc:
            raise ValueError(f"checkpoint {path}, layer {i}: {exc}") from None
        for s, (sw, sb) in st.items():
            if sw.shape != a["data"].shape or sb.shape != a["bias"].shape:
                raise ValueError(f"checkpoint {path}, layer {i}: optimizer state {s!r} "
                                 "misaligned")
        layer.state_w = {s: be.asarray(sw) for s, (sw, _) in st.items()}
        layer.state_b = {s: be.asarray(sb) for s, (_, sb) in st.items()}
        layers.append(layer)
    try:
        model = SparseMLP.from_layers(layers, **cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from None
    return Checkpoint(model, meta.get("train_state", {}))
