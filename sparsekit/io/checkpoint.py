"""Pickle-free, atomic, checksummed checkpoints.

A checkpoint is an ``.npz`` archive of plain numeric arrays — per layer its CSR arrays, bias and
momentum buffers — plus one UTF-8 JSON document (model configuration, training state, RNG state,
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
VERSION = 1
_LAYER_KEYS = ("indptr", "indices", "data", "bias", "vel_w", "vel_b")


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
    for i, layer in enumerate(model.layers):
        parts = (layer.w.indptr, layer.w.indices, layer.w.data, layer.b, layer.vel_w, layer.vel_b)
        for key, arr in zip(_LAYER_KEYS, parts):
            arrays[f"layer{i}_{key}"] = be.to_numpy(arr)
    meta = {"format": FORMAT, "version": VERSION, "model": model.config(),
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
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')} "
                         f"v{meta.get('version')}")
    cfg = dict(meta["model"])
    sizes = cfg.pop("layer_sizes")
    cfg.pop("seed", None)
    layers = []
    tmp_model = SparseMLP(sizes, **cfg, backend=backend, _layers=[])
    be = tmp_model.backend
    for i, shape in enumerate(meta["shapes"]):
        try:
            a = {key: arrays[f"layer{i}_{key}"] for key in _LAYER_KEYS}
        except KeyError as exc:
            raise ValueError(f"checkpoint {path} lacks array {exc}") from None
        try:
            w = CSR(be.asarray(a["indptr"]), be.asarray(a["indices"]), be.asarray(a["data"]),
                    tuple(shape))
            layer = SparseLayer(w, a["bias"], backend=be)
        except ValueError as exc:
            raise ValueError(f"checkpoint {path}, layer {i}: {exc}") from None
        if a["vel_w"].shape != a["data"].shape or a["vel_b"].shape != a["bias"].shape:
            raise ValueError(f"checkpoint {path}, layer {i}: optimizer state misaligned")
        layer.vel_w, layer.vel_b = be.asarray(a["vel_w"]), be.asarray(a["vel_b"])
        layers.append(layer)
    for i in range(len(layers) - 1):
        if layers[i].out_features != layers[i + 1].in_features:
            raise ValueError(f"checkpoint {path}: layer {i} and {i + 1} shapes do not chain")
    tmp_model.layers = layers
    return Checkpoint(tmp_model, meta.get("train_state", {}))
