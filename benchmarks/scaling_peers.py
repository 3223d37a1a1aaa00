"""The three peers of ``benchmarks/scaling.py``; each trains 784-w-w-w-10 for a few steps in
the calling process and returns timings, connection and FLOP counts as a dict.

Every peer draws the same Erdős–Rényi pattern (``sparsekit.nn.init.uniform_pattern``), uses
All-ReLU (slopes -0.6, +0.6, -0.6), dropout 0.3, softmax cross-entropy and SGD with momentum 0.9
and weight decay 2e-4 at lr 0.01 on standard-normal inputs with random labels.
"""

from __future__ import annotations

import time

import numpy as np

SLOPES = (-0.6, 0.6, -0.6)
LR, MOMENTUM, DECAY, DROPOUT = 0.01, 0.9, 2e-4, 0.3


def _data(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((n, 784)).astype(np.float32), rng.integers(0, 10, n)


def _patterns(sizes, epsilon, rng):
    """CSR (indptr, indices) of W (n_out x n_in) per layer, the same for every peer."""
    from sparsekit.nn.init import er_connections, uniform_pattern

    return [uniform_pattern(n_out, n_in, er_connections(n_out, n_in, epsilon), rng)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def _flops(sizes, nnz, batch):
    """Sparse and dense operations of one step (the table of ``sparsekit.training.flops``)."""
    from types import SimpleNamespace

    from sparsekit.training.flops import step_flops

    layers = [SimpleNamespace(w=SimpleNamespace(shape=(n_out, n_in), nnz=k), w_forward=None)
              for n_in, n_out, k in zip(sizes[:-1], sizes[1:], nnz)]
    return step_flops(SimpleNamespace(layers=layers), batch)


def _result(sizes, nnz, batch, times, init_s, **extra) -> dict:
    step = float(np.median(times))
    sparse, dense = _flops(sizes, nnz, batch)
    conns = int(sum(nnz))
    return {"connections": conns, "step_s": step, "step_times": [float(t) for t in times],
            "ns_per_conn_sample": step / (batch * conns) * 1e9, "init_s": init_s,
            "flops_step": sparse, "flops_dense_step": dense, **extra}


# --- sparsekit --------------------------------------------------------------------------------
def run_sparsekit(sizes, steps, threads, batch, epsilon, n_test) -> dict:
    import sparsekit
    from sparsekit._cython.backend import CpuBackend
    from sparsekit.training.memory import estimate_memory, resident_memory

    rng = np.random.default_rng(0)
    x, y = _data(steps * batch, rng)
    xt, yt = _data(n_test, rng)
    base = resident_memory()  # interpreter, libraries and data: what the process already holds
    est = estimate_memory(sizes, epsilon=epsilon, batch_size=batch, eval_batch_size=n_test,
                          n_test=n_test, baseline=base)
    t0 = time.perf_counter()
    model = sparsekit.SparseMLP(sizes, epsilon=epsilon, backend=CpuBackend(threads), seed=0)
    init_s = time.perf_counter() - t0
    res = sparsekit.train(model, (x, y, xt, yt), epochs=2, batch_size=batch, method="set",
                          eval_batch_size=n_test, seed=0)
    warm, timed = res.history
    per_step = timed["time_train"] / steps
    return _result(sizes, model.n_connections, batch, [per_step], init_s,
                   warmup_step_s=warm["time_train"] / steps, evolve_s=warm["time_evolve"],
                   eval_s=timed["time_eval"], predicted_peak=est.peak,
                   estimate=est.parts(), history_flops=timed["flops"] / steps,
                   history_flops_dense=timed["flops_dense"] / steps)


# --- PyTorch dense weights x mask -------------------------------------------------------------
def dense_bytes(sizes, batch) -> int:
    """Weights, mask, masked copy, gradient and momentum (5 dense arrays) plus activations."""
    dense = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 20 * dense + 16 * batch * sum(sizes) + 2**30


def run_torch(sizes, steps, threads, batch, epsilon, n_test) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    weights, masks, biases, nnz = [], [], [], []
    for (n_in, n_out), (indptr, indices) in zip(zip(sizes[:-1], sizes[1:]),
                                                _patterns(sizes, epsilon, rng)):
        mask = torch.zeros(n_out, n_in)
        rows = torch.from_numpy(np.repeat(np.arange(n_out), np.diff(indptr)))
        mask[rows, torch.from_numpy(indices.astype(np.int64))] = 1.0
        bound = float(np.sqrt(6.0 / n_in))
        w = (torch.empty(n_out, n_in).uniform_(-bound, bound) * mask).requires_grad_()
        weights.append(w)
        masks.append(mask)
        biases.append(torch.zeros(n_out, requires_grad=True))
        nnz.append(int(indices.shape[0]))
    init_s = time.perf_counter() - t0
    opt = torch.optim.SGD(weights + biases, lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    x, y = _data((steps + 1) * batch, rng)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    times = []
    for s in range(steps + 1):
        t = time.perf_counter()
        h = x[s * batch:(s + 1) * batch]
        for k, (w, m, b) in enumerate(zip(weights, masks, biases)):
            h = h @ (w * m).t() + b
            if k < len(weights) - 1:
                h = torch.where(h > 0, h, SLOPES[k % 3] * h)
                h = torch.nn.functional.dropout(h, DROPOUT, training=True)
        loss = torch.nn.functional.cross_entropy(h, y[s * batch:(s + 1) * batch])
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for w, m in zip(weights, masks):
                w.mul_(m)
        if s:  # the first step is a warm-up
            times.append(time.perf_counter() - t)
    return _result(sizes, nnz, batch, times, init_s)


# --- the SciPy approach of the public reference code -----------------------------------------
def scipy_bytes(sizes, epsilon, batch) -> int:
    """CSR weights and momentum, COO copies and the new matrices of the update (~60 B each)."""
    from sparsekit.nn.init import er_connections

    nnz = sum(er_connections(b, a, epsilon) for a, b in zip(sizes[:-1], sizes[1:]))
    return 60 * nnz + 24 * batch * sum(sizes) + 2**30


def _sddmm():
    """The reference's weight-gradient loop: one thread per connection range, reading the
    batch-major activations and deltas column-wise (strided), written for this benchmark."""
    from numba import njit, prange

    @njit(parallel=True, fastmath=True, cache=True)
    def grad(a, delta, rows, cols, out):
        n_batch = a.shape[0]
        for k in prange(rows.shape[0]):
            s = 0.0
            for b in range(n_batch):
                s += a[b, rows[k]] * delta[b, cols[k]]
            out[k] = s / n_batch

    return grad


def run_scipy(sizes, steps, threads, batch, epsilon, n_test) -> dict:
    import numba
    import scipy.sparse as sp

    numba.set_num_threads(threads)
    grad_kernel = _sddmm()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    weights, vel, biases, nnz = [], [], [], []
    for (n_in, n_out), (indptr, indices) in zip(zip(sizes[:-1], sizes[1:]),
                                                _patterns(sizes, epsilon, rng)):
        bound = np.float32(np.sqrt(6.0 / n_in))
        vals = rng.uniform(-bound, bound, indices.shape[0]).astype(np.float32)
        # The reference stores W as n_in x n_out so that the forward is dense @ CSR.
        w = sp.csr_matrix((vals, indices, indptr), shape=(n_out, n_in)).T.tocsr()
        weights.append(w)
        vel.append(sp.csr_matrix(w.shape, dtype=np.float32))
        biases.append(np.zeros(n_out, np.float32))
        nnz.append(int(indices.shape[0]))
    init_s = time.perf_counter() - t0
    x, y = _data((steps + 1) * batch, rng)
    times = []
    for s in range(steps + 1):
        t = time.perf_counter()
        a = [x[s * batch:(s + 1) * batch]]
        derivs = []
        for k, (w, b) in enumerate(zip(weights, biases)):
            z = np.asarray(a[-1] @ w, dtype=np.float32) + b
            if k < len(weights) - 1:
                d = np.where(z > 0, np.float32(1), np.float32(SLOPES[k % 3]))
                keep = (rng.random(z.shape) >= DROPOUT) / np.float32(1 - DROPOUT)
                derivs.append((d * keep).astype(np.float32))
                a.append((z * derivs[-1]).astype(np.float32))
            else:
                a.append(z)
        logits = a.pop()
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(batch), y[s * batch:(s + 1) * batch]] -= 1
        delta = p.astype(np.float32)
        for k in range(len(weights) - 1, -1, -1):
            coo = weights[k].tocoo()  # the reference converts to COO for rows/cols every step
            g = np.empty(coo.nnz, np.float32)
            grad_kernel(a[k], delta, coo.row, coo.col, g)
            dw = sp.csr_matrix((g, (coo.row, coo.col)), shape=weights[k].shape)
            db = delta.mean(axis=0)
            if k:
                delta = np.asarray(delta @ weights[k].T, dtype=np.float32) * derivs[k - 1]
            # Sparse matrix arithmetic: every operation builds a new CSR matrix.
            vel[k] = MOMENTUM * vel[k] - LR * dw
            weights[k] = weights[k] + vel[k] - DECAY * weights[k]
            biases[k] -= LR * db
        if s:
            times.append(time.perf_counter() - t)
    return _result(sizes, nnz, batch, times, init_s)


PEER_FUNCS = {"sparsekit": run_sparsekit, "torch-dense-mask": run_torch,
              "scipy-reference": run_scipy}
