"""Whole models and RNG states as typed MPI messages.

A model travels as three buffers: a JSON ``uint8`` header (configuration, per-layer shapes and
nnz, dtypes), one integer buffer with every layer's ``indptr`` and ``indices`` (in the layers'
index dtype), and one float buffer with every layer's values, biases and (optionally) optimizer
state slots.
That is O(total nnz), the same arrays a checkpoint holds; nothing is pickled.
"""

from __future__ import annotations

import numpy as np

from ..nn.csr import CSR, index_dtype_for
from ..nn.layers import SparseLayer
from ..nn.model import SparseMLP
from .comm import Comm

TAG_MODEL_META, TAG_MODEL_INDEX, TAG_MODEL_VALUES = 31, 32, 33


def model_meta(model: SparseMLP, with_state: bool) -> dict:
    """The JSON header describing :func:`pack_model`'s buffers."""
    idt = np.result_type(*[layer.w.indices.dtype for layer in model.layers])
    slots = list(model.layers[0].state_w) if with_state else []
    return {"config": model.config(), "shapes": [list(layer.w.shape) for layer in model.layers],
            "nnz": model.n_connections, "index_dtype": idt.name, "slots": slots}


def pack_model(model: SparseMLP, with_state: bool = True):
    """``(meta, index_buffer, value_buffer)`` on the model's device."""
    xp = model.backend.xp
    meta = model_meta(model, with_state)
    idt = np.dtype(meta["index_dtype"])
    index = xp.concatenate([part.astype(idt, copy=False) for layer in model.layers
                            for part in (layer.w.indptr, layer.w.indices)])
    parts = []
    for layer in model.layers:
        parts += [layer.w.data, layer.b]
        for slot in meta["slots"]:
            parts += [layer.state_w[slot], layer.state_b[slot]]
    return meta, index, xp.concatenate(parts)


def unpack_model(meta: dict, index, values, backend) -> SparseMLP:
    """Rebuild the model of :func:`pack_model` on ``backend`` (buffers may be host arrays)."""
    be = backend
    cfg = dict(meta["config"])
    sizes = cfg.pop("layer_sizes")
    cfg.pop("dtype")
    index, values = be.asarray(index), be.asarray(values)
    layers, io, vo = [], 0, 0
    slots = meta["slots"]
    for (n_out, n_in), nnz in zip(meta["shapes"], meta["nnz"]):
        idt = index_dtype_for(nnz, (n_out, n_in))
        indptr = index[io:io + n_out + 1].astype(idt)
        indices = index[io + n_out + 1:io + n_out + 1 + nnz].astype(idt)
        io += n_out + 1 + nnz
        take = [nnz, n_out] + [nnz, n_out] * len(slots)
        chunks = []
        for k in take:
            chunks.append(values[vo:vo + k].copy())
            vo += k
        w = CSR(be.xp.ascontiguousarray(indptr), be.xp.ascontiguousarray(indices), chunks[0],
                (n_out, n_in), check=False)
        layer = SparseLayer(w, chunks[1], backend=be)
        layer.state_w = {s: chunks[2 + 2 * k] for k, s in enumerate(slots)}
        layer.state_b = {s: chunks[3 + 2 * k] for k, s in enumerate(slots)}
        layers.append(layer)
    if io != index.shape[0] or vo != values.shape[0] or len(sizes) != len(layers) + 1:
        raise ValueError("model message does not match its header")
    return SparseMLP.from_layers(layers, **cfg)


def _buffers_for(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    n_index = sum(s[0] + 1 + nnz for s, nnz in zip(meta["shapes"], meta["nnz"]))
    per_layer = [(1 + len(meta["slots"])) * (nnz + s[0])
                 for s, nnz in zip(meta["shapes"], meta["nnz"])]
    return (np.empty(n_index, np.dtype(meta["index_dtype"])),
            np.empty(sum(per_layer), np.dtype(meta["config"]["dtype"])))


def bcast_model(comm: Comm, model: SparseMLP | None, backend, root: int = 0,
                with_state: bool = True) -> SparseMLP:
    """Every rank gets ``root``'s model (``model`` is ignored elsewhere)."""
    if comm.rank == root:
        meta, index, values = pack_model(model, with_state)
    else:
        meta = None
    meta = comm.bcast_json(meta, root, "model header")
    if comm.rank != root:
        index, values = _buffers_for(meta)
    comm.bcast(index, root, "model indices")
    comm.bcast(values, root, "model values")
    if comm.rank == root:
        return model
    return unpack_model(meta, index, values, backend)


def send_model(comm: Comm, model: SparseMLP, dest: int, with_state: bool = True) -> None:
    meta, index, values = pack_model(model, with_state)
    comm.send_json(meta, dest, TAG_MODEL_META, "model header")
    comm.send(index, dest, TAG_MODEL_INDEX, "model indices")
    comm.send(values, dest, TAG_MODEL_VALUES, "model values")


def recv_model(comm: Comm, source: int, backend) -> SparseMLP:
    meta = comm.recv_json(source, TAG_MODEL_META, "model header")
    index, values = _buffers_for(meta)
    comm.recv(index, source, TAG_MODEL_INDEX, "model indices")
    comm.recv(values, source, TAG_MODEL_VALUES, "model values")
    return unpack_model(meta, index, values, backend)


def rng_to_json(rng: np.random.Generator) -> dict:
    """The generator's bit-generator state (plain ints, JSON-safe)."""
    return rng.bit_generator.state


def rng_from_json(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
