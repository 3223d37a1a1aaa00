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
import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..nn.csr import CSR
from .runfolder import temporary_name

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
        h.update(memoryview(a).cast("B"))  # the bytes in place, no copy of the array
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
    tmp = temporary_name(path)
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


#: Most bytes the arrays of a checkpoint may expand to, as a multiple of the file's size (the
#: writer stores them uncompressed, so a real checkpoint is below 1x); a crafted archive that
#: declares more is refused before anything is decompressed.
MAX_EXPANSION = 16
#: Largest JSON header (model options, training state, history) read.
MAX_META_BYTES = 256 * 2**20
#: Options of the model section of the header (what :meth:`SparseMLP.config` writes).
MODEL_KEYS = ("layer_sizes", "epsilon", "activation", "alpha", "dropout", "init", "fan_in",
              "dtype", "seed")


class _Bad(ValueError):
    """A structural problem; :func:`load_checkpoint` prefixes the file name."""


def _member_headers(zf: zipfile.ZipFile, file_size: int) -> dict[str, tuple]:
    """``{name: (info, shape, dtype, fortran, header_bytes)}`` of every ``.npy`` member, read
    from the headers alone (nothing is decompressed beyond them)."""
    infos: dict[str, tuple] = {}
    declared = 0
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy") or "/" in name or name[:-4] in infos:
            raise _Bad(f"unexpected archive member {name!r}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _Bad(f"member {name!r} uses an unsupported compression")
        if info.header_offset + info.compress_size > file_size:
            raise _Bad(f"member {name!r} runs past the end of the file (truncated)")
        declared += info.file_size
        infos[name[:-4]] = info
    if declared > MAX_EXPANSION * file_size + 2**20:
        raise _Bad(f"its arrays declare {declared} bytes in a {file_size}-byte file; refused "
                   "before reading")
    out = {}
    for key, info in infos.items():
        with zf.open(info) as fh:
            try:
                major, _ = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if major == 1
                        else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read(fh)
            except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:
                # (NumPy parses a header it does not recognise with tokenize)
                raise _Bad(f"array {key!r} has an unreadable header ({exc})") from None
            header = fh.tell()
        if dtype.hasobject or dtype.kind not in "biuf" or not all(
                isinstance(d, int) and d >= 0 for d in shape):
            raise _Bad(f"array {key!r} has dtype {dtype} and shape {shape}; expected numbers")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if header + nbytes != info.file_size:
            raise _Bad(f"array {key!r} declares shape {shape} ({nbytes} bytes) but its member "
                       f"holds {info.file_size - header}")
        out[key] = (info, tuple(shape), dtype, fortran, header)
    return out


def _read(zf: zipfile.ZipFile, entry: tuple) -> np.ndarray:
    """One member's array, read into a buffer of exactly its checked size."""
    info, shape, dtype, fortran, header = entry
    arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    with zf.open(info) as fh:
        fh.read(header)
        got = fh.readinto(memoryview(arr.reshape(-1)).cast("B")) if arr.size else 0
    if got != arr.nbytes:
        raise _Bad(f"array {info.filename[:-4]!r} is truncated")
    return arr.T if fortran else arr


def _is_int(v, low=0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_meta(meta) -> None:
    """The JSON header has the structure :func:`save_checkpoint` writes."""
    if not isinstance(meta, dict):
        raise _Bad("its header is not a JSON object")
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE:
        raise _Bad(f"unsupported checkpoint format {meta.get('format')} v{meta.get('version')}")
    shapes, model = meta.get("shapes"), meta.get("model")
    if (not isinstance(shapes, list) or not shapes or not all(
            isinstance(s, list) and len(s) == 2 and all(_is_int(d, 1) for d in s)
            for s in shapes)):
        raise _Bad(f"layer shapes {shapes!r} are not a list of [n_out, n_in] positive integers")
    for i in range(1, len(shapes)):
        if shapes[i][1] != shapes[i - 1][0]:
            raise _Bad(f"layer shapes {shapes} do not chain at layer {i}")
    if not isinstance(model, dict):
        raise _Bad("its header has no model section")
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise _Bad(f"unknown model option(s) {', '.join(map(repr, unknown))}")
    sizes = [shapes[0][1]] + [s[0] for s in shapes]
    if "layer_sizes" in model and model["layer_sizes"] != sizes:
        raise _Bad(f"model layer_sizes {model['layer_sizes']} disagree with the layer shapes "
                   f"{shapes}")
    if model.get("dtype", "float32") not in ("float32", "float64"):
        raise _Bad(f"model dtype {model.get('dtype')!r} is not float32 or float64")
    slots = meta.get("slots", [])
    if not isinstance(slots, list) or not all(
            isinstance(s, str) and s.isidentifier() for s in slots) or len(set(slots)) < len(slots):
        raise _Bad(f"optimizer slots {slots!r} are not a list of distinct names")
    state = meta.get("train_state", {})
    if not isinstance(state, dict):
        raise _Bad("its training state is not a JSON object")
    for key in ("epoch", "step"):
        if key in state and not _is_int(state[key]):
            raise _Bad(f"training state {key} {state[key]!r} is not an integer >= 0")
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise _Bad("its history is not a list of epoch records")


def _expected(meta: dict) -> dict[str, tuple[str, Any]]:
    """``{array name: (dtype kinds, length or key of the shared length)}`` for the header."""
    version = meta["version"]
    slots = meta.get("slots", []) if version >= 2 else ["momentum"]
    names = ({s: (f"w_{s}", f"b_{s}") for s in slots} if version >= 2
             else {"momentum": ("vel_w", "vel_b")})
    out: dict[str, tuple[str, Any]] = {}
    for i, (n_out, _) in enumerate(meta["shapes"]):
        nnz = f"nnz{i}"
        out[f"layer{i}_indptr"] = ("iu", n_out + 1)
        out[f"layer{i}_indices"] = ("iu", nnz)
        out[f"layer{i}_data"] = ("f", nnz)
        out[f"layer{i}_bias"] = ("f", n_out)
        for kw, kb in names.values():
            out[f"layer{i}_{kw}"] = ("f", nnz)
            out[f"layer{i}_{kb}"] = ("f", n_out)
    return out


def _check_arrays(meta: dict, headers: dict[str, tuple]) -> None:
    """Every array the header implies is present, 1-D, of its kind and length; none other."""
    expected = _expected(meta)
    extra = sorted(set(headers) - set(expected) - {"meta", "checksum"})
    missing = sorted(set(expected) - set(headers))
    if extra or missing:
        what = "; ".join(filter(None, [f"unexpected array(s) {', '.join(extra)}" if extra else "",
                                       f"missing array(s) {', '.join(missing)}" if missing
                                       else ""]))
        raise _Bad(what)
    lengths: dict[str, int] = {}
    for key, (kinds, length) in expected.items():
        _, shape, dtype, _, _ = headers[key]
        if len(shape) != 1 or dtype.kind not in kinds:
            raise _Bad(f"array {key!r} has dtype {dtype} and shape {shape}; expected a 1-D "
                       f"{'float' if kinds == 'f' else 'integer'} array")
        if isinstance(length, str):
            length = lengths.setdefault(length, shape[0])
        if shape[0] != length:
            raise _Bad(f"array {key!r} has {shape[0]} entries, expected {length}")
    for i, (n_out, n_in) in enumerate(meta["shapes"]):
        if lengths[f"nnz{i}"] > n_out * n_in:
            raise _Bad(f"layer {i} declares {lengths[f'nnz{i}']} connections, more than its "
                       f"{n_out} x {n_in} positions")


def _check_sizes(meta: dict, layer_sizes) -> None:
    """The checkpoint's layers against the configured ``layer_sizes`` (hidden layers may only
    have shrunk, by importance pruning)."""
    have = [meta["shapes"][0][1]] + [s[0] for s in meta["shapes"]]
    want = list(layer_sizes)
    if (len(have) != len(want) or have[0] != want[0] or have[-1] != want[-1]
            or any(h > w for h, w in zip(have[1:-1], want[1:-1]))):
        raise _Bad(f"its layers {have} do not match the configured network {want}")


def load_checkpoint(path, backend=None, *, layer_sizes=None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` onto ``backend``.

    Nothing is decompressed before the archive's declared sizes are checked against the file's
    size (at most :data:`MAX_EXPANSION` times it), the header's structure is checked, and every
    array's declared dtype and shape are checked against the layer shapes the header states;
    each array is then read once into a buffer of exactly that size.

    Parameters
    ----------
    path : path
        The ``.npz`` file.
    backend : str or Backend, optional
        Where the model is loaded.
    layer_sizes : sequence of int, optional
        The network the caller expects (a run's configuration); a checkpoint of another
        architecture is refused before its arrays are read.  Hidden layers may be smaller
        (importance pruning shrinks them).

    Raises
    ------
    ValueError
        One line naming the file, for a truncated, corrupt, modified or structurally wrong
        checkpoint (unknown or missing arrays, wrong shapes, a bad header or training state).
    FileNotFoundError
        When it does not exist.
    """
    from ..backends import get_backend
    from ..nn.layers import SparseLayer
    from ..nn.model import SparseMLP

    path = Path(path)
    if not path.exists() and path.with_suffix(".npz").exists():
        path = path.with_suffix(".npz")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file")
    try:
        meta, arrays = _read_checked(path, layer_sizes)
    except _Bad as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
            NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({exc})") from None
    cfg = dict(meta["model"])
    cfg.pop("layer_sizes", None)
    cfg.pop("seed", None)
    dtype = cfg.pop("dtype", "float32")
    be = get_backend(backend)
    slots = meta.get("slots", []) if meta["version"] >= 2 else ["momentum"]
    names = ({s: (f"w_{s}", f"b_{s}") for s in slots} if meta["version"] >= 2
             else {"momentum": ("vel_w", "vel_b")})
    layers = []
    for i, shape in enumerate(meta["shapes"]):
        a = {key: arrays[f"layer{i}_{key}"] for key in _LAYER_KEYS}
        try:
            w = CSR(be.asarray(a["indptr"]), be.asarray(a["indices"]),
                    be.asarray(a["data"], dtype=dtype), tuple(shape))
            layer = SparseLayer(w, a["bias"].astype(dtype, copy=False), backend=be)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {path}, layer {i}: {exc}") from None
        # the bias and the optimizer state are refused like W's values when not finite
        for key in ("bias", *(k for pair in names.values() for k in pair)):
            arr = arrays[f"layer{i}_{key}"]
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError(f"checkpoint {path}, layer {i}: {key} holds NaN or inf")
        layer.state_w = {s: be.asarray(arrays[f"layer{i}_{kw}"], dtype=dtype)
                         for s, (kw, _) in names.items()}
        layer.state_b = {s: be.asarray(arrays[f"layer{i}_{kb}"], dtype=dtype)
                         for s, (_, kb) in names.items()}
        layers.append(layer)
    try:
        model = SparseMLP.from_layers(layers, **cfg)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from None
    return Checkpoint(model, meta.get("train_state", {}))


def peek_train_state(path) -> dict:
    """The training state in ``path``'s header, read without its arrays or checksum: a hint
    for checks made before a run starts (:func:`load_checkpoint` verifies everything)."""
    with zipfile.ZipFile(path) as zf:
        headers = _member_headers(zf, Path(path).stat().st_size)
        if "meta" not in headers:
            raise _Bad("not a sparsekit checkpoint (no meta)")
        _, mshape, mdtype, _, _ = headers["meta"]
        if mdtype != np.uint8 or len(mshape) != 1 or mshape[0] > MAX_META_BYTES:
            raise _Bad(f"its header has dtype {mdtype} and shape {mshape}")
        meta = json.loads(_read(zf, headers["meta"]).tobytes().decode())
    state = meta.get("train_state") if isinstance(meta, dict) else None
    return state if isinstance(state, dict) else {}


def _read_checked(path: Path, layer_sizes) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and arrays of ``path``, every size checked before it is read."""
    with zipfile.ZipFile(path) as zf:
        headers = _member_headers(zf, path.stat().st_size)
        for key in ("meta", "checksum"):
            if key not in headers:
                raise _Bad(f"not a sparsekit checkpoint (no {key})")
        _, mshape, mdtype, _, _ = headers["meta"]
        if mdtype != np.uint8 or len(mshape) != 1 or mshape[0] > MAX_META_BYTES:
            raise _Bad(f"its header has dtype {mdtype} and shape {mshape}")
        try:
            meta = json.loads(_read(zf, headers["meta"]).tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Bad(f"its header is unreadable ({exc})") from None
        _check_meta(meta)
        if layer_sizes is not None:
            _check_sizes(meta, layer_sizes)
        _check_arrays(meta, headers)
        _, cshape, _, _, _ = headers["checksum"]
        if cshape != (64,):
            raise _Bad("its checksum is malformed")
        arrays = {key: _read(zf, entry) for key, entry in headers.items() if key != "checksum"}
        stored = _read(zf, headers["checksum"]).tobytes().decode(errors="replace")
    if _digest(arrays) != stored:
        raise _Bad("it is corrupt or was modified (checksum mismatch)")
    return meta, arrays
