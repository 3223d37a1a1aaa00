"""The peers of the kernel benchmark; each one runs in its own process (see kernels.py).

Every peer loads the same layers (written once by :func:`prepare`), checks its results against a
SciPy/NumPy oracle, then times each kernel: warm-up, then at least ``min_repeats`` timed calls,
median and min.  Heavy imports (torch) happen inside the peer that needs them.

Conventions: W has shape ``(n_out, n_in)`` (rows = output neurons), activations are feature-major
``x_ib`` (n_in x batch) and ``dy_ob`` (n_out x batch); a "batch-major" array is the transpose.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp

SDDMM_CHUNK = 4096  # entries per chunk of the NumPy SDDMM peers (two 2 MB gathers at B = 128)
VERIFY_SAMPLE = 200_000  # SDDMM entries checked against the float64 oracle on large layers
REF_SDDMM_TIMED_NNZ = 2_000_000  # above, the reference SDDMM is timed on a share of its chunks


# --- timing ------------------------------------------------------------------------------------
# The machine is shared: another job on one of the two cores stalls a 2-thread team at every
# barrier for a scheduler slice (4-16 ms steps).  Calls are therefore timed in rounds of about
# ROUND_S; a round counts as clean when the rest of the machine used at most
# cfg["foreign_limit"] cores meanwhile (from /proc/stat minus this process's CPU time), and the
# figures come from clean rounds whenever at least min_repeats calls were clean in time (each
# kernel may wait up to cfg["clean_wait_s"] for them, a process cfg["clean_wait_total_s"]).
ROUND_S = 0.15
_wait_left: float | None = None  # seconds this process may still spend waiting for clean rounds


def _cpu_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _monitored(calls: Callable[[], list[dict[str, float]]]) -> tuple[list, float]:
    """Run ``calls``; also return the cores the rest of the machine used meanwhile."""
    b0, c0, w0 = _cpu_busy_s(), time.process_time(), time.perf_counter()
    got = calls()
    wall = max(time.perf_counter() - w0, 1e-9)
    return got, max(_cpu_busy_s() - b0 - (time.process_time() - c0), 0.0) / wall


def sample(step: Callable[[], dict[str, float]], cfg: dict, per_call_s: float,
           first: tuple[list, float] | None = None) -> dict:
    """Run ``step`` (returns seconds per phase) in rounds; stats per phase from clean rounds.

    ``first`` is an already timed round (its results and the foreign load during it).
    """
    global _wait_left
    if _wait_left is None:
        _wait_left = cfg["clean_wait_total_s"]
    per_round = max(1, int(ROUND_S / max(per_call_s, 1e-7)))
    clean: dict[str, list[float]] = {}
    dirty: dict[str, list[float]] = {}
    n_clean = n_all = 0
    start = time.perf_counter()
    soft = start + cfg["budget_s"]
    normal = start + max(cfg["budget_s"], cfg["min_repeats"] * per_call_s)
    hard = normal + min(cfg["clean_wait_s"], _wait_left)
    while True:
        if first is not None:
            (got, foreign), first = first, None
        else:
            got, foreign = _monitored(lambda: [step() for _ in range(per_round)])
        ok = foreign <= cfg["foreign_limit"]
        for g in got:
            for k, v in g.items():
                (clean if ok else dirty).setdefault(k, []).append(v)
        n_clean += len(got) if ok else 0
        n_all += len(got)
        now = time.perf_counter()
        if n_clean >= cfg["min_repeats"] and (now >= soft or n_clean >= cfg["max_repeats"]):
            break
        if now >= hard and n_all >= cfg["min_repeats"]:
            break
    _wait_left = max(0.0, _wait_left - max(0.0, time.perf_counter() - normal))
    use = clean
    if n_clean < cfg["min_repeats"]:
        use = {k: clean.get(k, []) + dirty.get(k, []) for k in dirty.keys() | clean.keys()}
    return {k: {**stats(v), "n_clean": n_clean, "n_all": n_all,
                "contended": n_clean < cfg["min_repeats"]} for k, v in use.items()}


def timeit(fn: Callable[[], object], cfg: dict, prewarmed: bool = False) -> dict:
    """Median/min of single calls of ``fn`` after warm-up, from clean rounds (see above).

    Fast calls get ``cfg["warmup"]`` warm-up calls; a call over 0.2 s gets one, or none when
    ``prewarmed`` (the verification call just ran it in this process, so the first timed call
    is already a sample).
    """
    def once() -> dict[str, float]:
        t0 = time.perf_counter()
        fn()
        return {"t": time.perf_counter() - t0}

    first = _monitored(lambda: [once()])
    t_first = first[0][0]["t"]
    if t_first < 0.2:
        for _ in range(cfg["warmup"] - 1):
            fn()
        first = None
    elif not prewarmed:
        first = _monitored(lambda: [once()])
    return sample(once, cfg, t_first, first)["t"]


def stats(times) -> dict:
    arr = np.asarray(times)
    return {"median": float(np.median(arr)), "min": float(arr.min()),
            "q75": float(np.percentile(arr, 75)), "n": int(arr.shape[0])}


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


# --- layers --------------------------------------------------------------------------------------
def prepare(layers: list[dict], data_dir: Path, batch: int, seed: int = 0) -> list[dict]:
    """Build every layer with sparsekit's ER init and write W, x_ib, dy_ob to ``data_dir``."""
    from sparsekit._cython.backend import CpuBackend
    from sparsekit.nn.init import erdos_renyi

    be = CpuBackend(num_threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = []
    for spec in layers:
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        w = erdos_renyi(spec["n_out"], spec["n_in"], spec["epsilon"], rng=seed, backend=be)
        t_init = time.perf_counter() - t0
        # ReLU-like input (about half zeros) and a dense upstream gradient.
        x_ib = np.maximum(rng.standard_normal((spec["n_in"], batch), dtype=np.float32), 0)
        dy_ob = rng.standard_normal((spec["n_out"], batch), dtype=np.float32)
        np.savez(data_dir / f"{spec['name']}.npz", indptr=w.indptr, indices=w.indices,
                 data=w.data, x_ib=x_ib, dy_ob=dy_ob)
        write_oracle(data_dir / f"oracle-{spec['name']}.npz", w.to_scipy(), x_ib, dy_ob)
        out.append({**spec, "nnz": w.nnz, "density": w.nnz / (spec["n_out"] * spec["n_in"]),
                    "er_init_s": t_init})
    return out


def load(data_dir: Path, spec: dict):
    z = np.load(data_dir / f"{spec['name']}.npz")
    shape = (spec["n_out"], spec["n_in"])
    w_sp = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
    return w_sp, z["x_ib"], z["dy_ob"]


# --- the oracle ----------------------------------------------------------------------------------
def write_oracle(path: Path, w_sp, x_ib, dy_ob, seed: int = 1) -> None:
    """float64 references (and the |term| sums that scale float32 rounding) for one layer."""
    w = w_sp.astype(np.float64)
    absw = abs(w)
    x, dy = x_ib.astype(np.float64), dy_ob.astype(np.float64)
    nnz = w_sp.nnz
    sample = (np.arange(nnz) if nnz <= VERIFY_SAMPLE else
              np.sort(np.random.default_rng(seed).choice(nnz, VERIFY_SAMPLE, False)))
    r = np.repeat(np.arange(w_sp.shape[0]), np.diff(w_sp.indptr))[sample]
    c = w_sp.indices[sample]
    g_ref, g_scale = np.empty(r.shape[0]), np.empty(r.shape[0])
    for s in range(0, r.shape[0], SDDMM_CHUNK):
        a, b = dy[r[s:s + SDDMM_CHUNK]], x[c[s:s + SDDMM_CHUNK]]
        g_ref[s:s + SDDMM_CHUNK] = np.einsum("kb,kb->k", a, b)
        g_scale[s:s + SDDMM_CHUNK] = np.einsum("kb,kb->k", np.abs(a), np.abs(b))
    np.savez(path, fwd_ref=w @ x, fwd_scale=absw @ np.abs(x), bwd_ref=w.T @ dy,
             bwd_scale=absw.T @ np.abs(dy), sample=sample, grad_ref=g_ref, grad_scale=g_scale)


class Oracle:
    """The layer's float64 references (written by :func:`prepare`) and the comparison."""

    def __init__(self, data_dir: Path, spec: dict, w_sp):
        z = np.load(data_dir / f"oracle-{spec['name']}.npz")
        self._fwd = (z["fwd_ref"], z["fwd_scale"])
        self._bwd = (z["bwd_ref"], z["bwd_scale"])
        self._grad = (z["grad_ref"], z["grad_scale"])
        self.sample = z["sample"]
        self.rows = np.repeat(np.arange(w_sp.shape[0]), np.diff(w_sp.indptr))
        self.cols = w_sp.indices.astype(np.int64)

    def fwd(self):
        return self._fwd

    def bwd(self):
        return self._bwd

    def grad(self):
        return self._grad

    @staticmethod
    def check(name: str, got, ref_scale, rtol: float = 1e-4) -> float:
        """Max error relative to the sum of |terms| (the float32 rounding scale); raises."""
        ref, scale = ref_scale
        got = np.asarray(got, dtype=np.float64)
        if got.shape != ref.shape:
            raise AssertionError(f"{name}: shape {got.shape}, expected {ref.shape}")
        err = float(np.max(np.abs(got - ref) / (scale + 1e-30), initial=0.0))
        if not err <= rtol:
            raise AssertionError(f"{name}: relative error {err:.3g} > {rtol}")
        return err

    def check_grad(self, name: str, got) -> float:
        return self.check(name, np.asarray(got)[self.sample], self.grad())


# --- machine limits ------------------------------------------------------------------------------
def machine(cfg: dict, threads: int) -> dict:
    """sgemm FLOP/s (NumPy) and STREAM-like copy/triad bandwidth, with ``threads`` threads."""
    rng = np.random.default_rng(0)
    res: dict = {}
    n = cfg["sgemm_n"]
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    t = timeit(lambda: np.matmul(a, b, out=c), {**cfg, "budget_s": 2 * cfg["budget_s"]})
    res["sgemm_large"] = {"shape": [n, n, n], **t, "gflops": 2 * n**3 / t["median"] / 1e9,
                          "gflops_best": 2 * n**3 / t["min"] / 1e9}
    k = cfg["sgemm_n"]
    x = rng.standard_normal((k, 128), dtype=np.float32)
    y = np.empty((k, 128), np.float32)
    t = timeit(lambda: np.matmul(a, x, out=y), cfg)
    f = 2 * k * k * 128
    res["sgemm_b128"] = {"shape": [k, k, 128], **t, "gflops": f / t["median"] / 1e9,
                         "gflops_best": f / t["min"] / 1e9}
    a = b = c = None  # free 200 MB before the bandwidth arrays
    n = cfg["stream_n"]
    src = np.ones(n, np.float32)
    dst = np.zeros(n, np.float32)
    src2 = np.full(n, 2.0, np.float32)
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    slices = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(threads)]
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def run(kernel):
        if pool is None:
            kernel(slices[0])
        else:
            list(pool.map(kernel, slices))

    def copy(s):
        np.copyto(dst[s], src[s])

    def triad(s):  # a = b + q * c in two NumPy passes; counted as STREAM counts it (3 arrays)
        np.multiply(src2[s], np.float32(3.0), out=dst[s])
        np.add(dst[s], src[s], out=dst[s])

    for name, kern, nbytes in (("copy", copy, 8 * n), ("triad", triad, 12 * n)):
        t = timeit(lambda kern=kern: run(kern), cfg)
        res[f"stream_{name}"] = {"bytes": nbytes, **t, "gbs": nbytes / t["median"] / 1e9,
                                 "gbs_best": nbytes / t["min"] / 1e9}
    if pool is not None:
        pool.shutdown()
    # Limits are best-of-N rates (as STREAM reports them): a neighbour's job can only slow a
    # sample down, so the fastest one is the closest to what the hardware can do.
    res["P_gflops"] = max(res["sgemm_large"]["gflops_best"], res["sgemm_b128"]["gflops_best"])
    res["BW_gbs"] = max(res["stream_copy"]["gbs_best"], res["stream_triad"]["gbs_best"])
    return res


# --- sparsekit -----------------------------------------------------------------------------------
def sparsekit_peer(spec: dict, data_dir: Path, cfg: dict, threads: int) -> dict:
    from sparsekit._cython.backend import CpuBackend
    from sparsekit.nn.csr import CSR

    be = CpuBackend(num_threads=threads)
    w_sp, x_ib, dy_ob = load(data_dir, spec)
    w = CSR(w_sp.indptr, w_sp.indices, w_sp.data, w_sp.shape)  # validated once, as in training
    oracle = Oracle(data_dir, spec, w_sp)
    errs = {
        "fwd": oracle.check("matmul", be.matmul(x_ib, w), oracle.fwd()),
        "bwd": oracle.check("matmul_t", be.matmul_t(dy_ob, w), oracle.bwd()),
        "sddmm": oracle.check_grad("weight_grad", be.weight_grad(x_ib, dy_ob, w)),
    }
    dx, g = be.backward(x_ib, dy_ob, w)
    errs["fused"] = max(oracle.check("backward.dx", dx, oracle.bwd()),
                        oracle.check_grad("backward.grad", g))
    del oracle

    def build_transpose():
        w._transpose = None
        be.transpose_index(w)

    res = {"verify_max_rel_err": errs, "kernels": {}}
    res["transpose_index"] = timeit(build_transpose, cfg)
    k = res["kernels"]
    k["fwd"] = timeit(lambda: be.matmul(x_ib, w), cfg, prewarmed=True)
    k["bwd"] = timeit(lambda: be.matmul_t(dy_ob, w), cfg, prewarmed=True)
    k["sddmm"] = timeit(lambda: be.weight_grad(x_ib, dy_ob, w), cfg, prewarmed=True)
    k["fused"] = timeit(lambda: be.backward(x_ib, dy_ob, w), cfg, prewarmed=True)
    k["fused_nodx"] = timeit(lambda: be.backward(x_ib, dy_ob, w, need_dx=False), cfg)
    # The operands above are where NumPy put them (np.load: usually 16 bytes past a 64-byte
    # line).  The same products on 64-byte-aligned copies show what alignment is worth.
    res["input_align"] = {"x_ib": x_ib.ctypes.data % 64, "dy_ob": dy_ob.ctypes.data % 64}
    xa, dya = aligned64(x_ib), aligned64(dy_ob)
    res["aligned64"] = {
        "fwd": timeit(lambda: be.matmul(xa, w), cfg),
        "bwd": timeit(lambda: be.matmul_t(dya, w), cfg),
        "sddmm": timeit(lambda: be.weight_grad(xa, dya, w), cfg),
        "fused": timeit(lambda: be.backward(xa, dya, w), cfg),
    }
    res["set_step"] = set_step(be, w, cfg)
    return res


def aligned64(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` that starts on a 64-byte boundary."""
    buf = np.empty(a.nbytes + 64, np.uint8)
    start = (-buf.ctypes.data) % 64
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def set_step(be, w, cfg: dict, zeta: float = 0.3) -> dict:
    """One SET step, timed per phase: prune, regrow, rebuild (+ the transpose index apart)."""
    from sparsekit.growth.set import magnitude_keep_mask
    from sparsekit.nn.init import init_values

    momentum = np.random.default_rng(2).standard_normal(w.nnz, dtype=np.float32)

    def prune():  # what SET calls: the backend's fused sign-wise selection on the CPU
        return magnitude_keep_mask(be, w.data, zeta)

    def regrow(m, seed):
        rng = np.random.default_rng(seed)
        rows, cols = be.sample_absent(w, m, rng)
        vals = init_values(rows, w.shape, rng, w.dtype, num_threads=be.host_threads(m))
        return rows, cols, vals

    # correctness of the step before timing it
    keep = prune()
    m = int(w.nnz - keep.sum())
    rows, cols, vals = regrow(m, 0)
    new_w, (new_mom,) = be.rebuild(w, keep, rows, cols, vals, momentum)
    new_w.validate()
    n_in = w.shape[1]
    keys = np.concatenate([(w.row_ids().astype(np.int64) * n_in + w.indices)[keep],
                           rows.astype(np.int64) * n_in + cols])
    order = np.argsort(keys, kind="stable")
    got_keys = new_w.row_ids().astype(np.int64) * n_in + new_w.indices
    assert np.array_equal(got_keys, keys[order]), "rebuild: wrong pattern"
    assert np.array_equal(new_w.data, np.concatenate([w.data[keep], vals])[order]), \
        "rebuild: values misplaced"
    assert np.array_equal(new_mom, np.concatenate([momentum[keep], np.zeros(m, np.float32)])[order]), \
        "rebuild: state array misaligned"
    assert not be.contains(w, rows, cols).any(), "sample_absent returned present positions"

    # Timed as one step per repeat, phase by phase, on the same starting layer.
    seeds = iter(range(1, 1 << 30))

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        keep_ = prune()
        t1 = time.perf_counter()
        r, c, v = regrow(m, next(seeds))
        t2 = time.perf_counter()
        nw, _ = be.rebuild(w, keep_, r, c, v, momentum)
        t3 = time.perf_counter()
        be.transpose_index(nw)
        t4 = time.perf_counter()
        return {"prune": t1 - t0, "regrow": t2 - t1, "rebuild": t3 - t2, "total": t3 - t0,
                "transpose_index": t4 - t3}

    warm = step()  # warm-up
    return {"dropped": m, **sample(step, cfg, warm["total"] + warm["transpose_index"])}


def set_step_peer(spec: dict, data_dir: Path, cfg: dict, threads: int) -> dict:
    """``kernels.py --only set-step``: one forward product and one SET step, sparsekit only."""
    from sparsekit._cython.backend import CpuBackend
    from sparsekit.nn.csr import CSR

    be = CpuBackend(num_threads=threads)
    w_sp, x_ib, _ = load(data_dir, spec)
    w = CSR(w_sp.indptr, w_sp.indices, w_sp.data, w_sp.shape)
    return {"kernels": {"fwd": timeit(lambda: be.matmul(x_ib, w), cfg)},
            "set_step": set_step(be, w, cfg)}


# --- SciPy (reference code orientation and best orientation) --------------------------------
def _sddmm_batch_major(x_bi, dy_bo, r_in, c_out, out, every: int = 1):
    """The SET/Curci access pattern: per connection, strided reads down the batch.

    ``every`` > 1 does only every ``every``-th chunk (for timing a sample of a huge layer).
    """
    for s in range(0, r_in.shape[0], SDDMM_CHUNK * every):
        e = s + SDDMM_CHUNK
        out[s:e] = (x_bi[:, r_in[s:e]] * dy_bo[:, c_out[s:e]]).sum(0)
    return out


def _sddmm_feature_major(x_ib, dy_ob, rows, cols, out):
    for s in range(0, rows.shape[0], SDDMM_CHUNK):
        e = s + SDDMM_CHUNK
        out[s:e] = np.einsum("kb,kb->k", dy_ob[rows[s:e]], x_ib[cols[s:e]])
    return out


def scipy_peer(spec: dict, data_dir: Path, cfg: dict, threads: int) -> dict:
    w, x_ib, dy_ob = load(data_dir, spec)
    oracle = Oracle(data_dir, spec, w)
    nnz = w.nnz
    # The reference code keeps W as (n_in, n_out) CSR and batch-major activations.
    perm = sp.csr_matrix((np.arange(nnz, dtype=np.int64), w.indices, w.indptr),
                         shape=w.shape).T.tocsr()
    w_ref = sp.csr_matrix((w.data[perm.data], perm.indices, perm.indptr), shape=perm.shape)
    w_ref_csc_t = w.T  # CSC view of W.T (no copy)
    x_bi = np.ascontiguousarray(x_ib.T)
    dy_bo = np.ascontiguousarray(dy_ob.T)
    rows = oracle.rows
    cols = oracle.cols
    ref_in = np.repeat(np.arange(w.shape[1]), np.diff(perm.indptr))  # W_ref rows = inputs
    ref_out = perm.indices.astype(np.int64)  # W_ref cols = outputs
    g_buf = np.empty(nnz, np.float32)
    g_ref_buf = np.empty(nnz, np.float32)

    cands = {
        "fwd": {
            "ref: X @ W (batch-major, W as in x out CSR)": lambda: x_bi @ w_ref,
            "W @ X (CSR-left, feature-major)": lambda: w @ x_ib,
            "W_ref.T @ X (CSC-left)": lambda: w_ref.T @ x_ib,
        },
        "bwd": {
            "ref: dY @ W.T (batch-major)": lambda: dy_bo @ w_ref.T,
            "W.T @ dY (CSC-left)": lambda: w_ref_csc_t @ dy_ob,
        },
        "sddmm": {
            "ref: (X[:, i] * dY[:, o]).sum(0), chunked": lambda: _sddmm_batch_major(
                x_bi, dy_bo, ref_in, ref_out, g_ref_buf),
            "einsum(dY[o], X[i]), feature-major, chunked": lambda: _sddmm_feature_major(
                x_ib, dy_ob, rows, cols, g_buf),
        },
    }
    checks = {"fwd": (oracle.fwd(), lambda y: y.T if y.shape[0] == x_bi.shape[0] else y),
              "bwd": (oracle.bwd(), lambda y: y.T if y.shape[0] == x_bi.shape[0] else y)}
    errs = {}
    for kern in ("fwd", "bwd"):
        ref, orient = checks[kern]
        for name, fn in cands[kern].items():
            errs[f"{kern}: {name}"] = oracle.check(name, orient(np.asarray(fn())), ref)
    inv = np.empty(nnz, np.int64)
    inv[perm.data] = np.arange(nnz)
    full_call = {}
    for name, fn in cands["sddmm"].items():
        t0 = time.perf_counter()
        g = np.array(fn())
        full_call[name] = time.perf_counter() - t0
        if name.startswith("ref"):
            g = g[inv]  # back to W's CSR order
        errs[f"sddmm: {name}"] = oracle.check_grad(name, g)
    del oracle
    # On huge layers the reference SDDMM takes ~10 s a call: time it on every k-th chunk (the
    # same access pattern over the whole layer) and scale by the share of chunks done.
    n_chunks = -(-nnz // SDDMM_CHUNK)
    every = max(1, nnz // REF_SDDMM_TIMED_NNZ)
    ref_sddmm = next(n for n in cands["sddmm"] if n.startswith("ref"))
    if every > 1:
        cands["sddmm"][ref_sddmm] = lambda: _sddmm_batch_major(x_bi, dy_bo, ref_in, ref_out,
                                                                g_ref_buf, every)
    res: dict = {"verify_max_rel_err": errs, "kernels": {}}
    for kern, fns in cands.items():
        timed = {name: timeit(fn, cfg, prewarmed=True) for name, fn in fns.items()}
        if kern == "sddmm" and every > 1:
            scale = n_chunks / len(range(0, n_chunks, every))
            t = timed[ref_sddmm]
            t.update(median=t["median"] * scale, min=t["min"] * scale, q75=t["q75"] * scale,
                     estimated_from_share=1 / scale, full_single_call_s=full_call[ref_sddmm])
        ref_name = next(n for n in timed if n.startswith("ref"))
        best_name = min(timed, key=lambda n: timed[n]["median"])
        res["kernels"][kern] = {"candidates": timed, "ref": ref_name, "best": best_name}
    return res


# --- torch ---------------------------------------------------------------------------------------
def torch_peer(spec: dict, data_dir: Path, cfg: dict, threads: int) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(threads)
    w, x_ib, dy_ob = load(data_dir, spec)
    oracle = Oracle(data_dir, spec, w)
    wt = w.T.tocsr()

    def csr(m, idx_dtype):
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(idx_dtype)),
                                       torch.from_numpy(m.indices.astype(idx_dtype)),
                                       torch.from_numpy(m.data), size=m.shape)

    x_t, dy_t = torch.from_numpy(x_ib), torch.from_numpy(dy_ob)
    x_bi_t = torch.from_numpy(np.ascontiguousarray(x_ib.T))
    cands: dict[str, dict[str, Callable]] = {"fwd": {}, "bwd": {}, "sddmm": {}}
    for idt in (np.int64, np.int32):
        tag = np.dtype(idt).name
        w_t, wt_t = csr(w, idt), csr(wt, idt)
        cands["fwd"][f"sparse.mm(W, X) {tag}"] = lambda w_t=w_t: torch.sparse.mm(w_t, x_t)
        cands["bwd"][f"sparse.mm(W_T, dY) {tag}"] = lambda wt_t=wt_t: torch.sparse.mm(wt_t, dy_t)
        cands["sddmm"][f"sampled_addmm(W, dY, X^T) {tag}"] = (
            lambda w_t=w_t: torch.sparse.sampled_addmm(w_t, dy_t, x_bi_t, beta=0.0, alpha=1.0))
    errs = {}
    with torch.no_grad():
        for name, fn in cands["fwd"].items():
            errs[f"fwd: {name}"] = oracle.check(name, fn().numpy(), oracle.fwd())
        for name, fn in cands["bwd"].items():
            errs[f"bwd: {name}"] = oracle.check(name, fn().numpy(), oracle.bwd())
        for name, fn in cands["sddmm"].items():
            g = fn()
            if not np.array_equal(g.col_indices().numpy(), w.indices):
                raise AssertionError("sampled_addmm returned another pattern")
            errs[f"sddmm: {name}"] = oracle.check_grad(name, g.values().numpy())
        del oracle
        res: dict = {"verify_max_rel_err": errs, "kernels": {}}
        for kern, fns in cands.items():
            timed = {name: timeit(fn, cfg, prewarmed=True) for name, fn in fns.items()}
            best = min(timed, key=lambda n: timed[n]["median"])
            res["kernels"][kern] = {"candidates": timed, "best": best}
    return res


# --- dense NumPy ---------------------------------------------------------------------------------
DENSE_LIMIT_BYTES = 4 << 30


def dense_peer(spec: dict, data_dir: Path, cfg: dict, threads: int) -> dict:
    n_out, n_in = spec["n_out"], spec["n_in"]
    need = 2 * 4 * n_out * n_in  # W and a full-size gradient
    if need > DENSE_LIMIT_BYTES:
        return {"skipped": f"dense W + gradient would need {need / 2**30:.0f} GiB (> 4 GiB)"}
    w, x_ib, dy_ob = load(data_dir, spec)
    wd = w.toarray()
    oracle = Oracle(data_dir, spec, w)
    y = np.empty((n_out, x_ib.shape[1]), np.float32)
    dx = np.empty((n_in, x_ib.shape[1]), np.float32)
    gd = np.empty((n_out, n_in), np.float32)
    errs = {"fwd": oracle.check("dense fwd", np.matmul(wd, x_ib, out=y), oracle.fwd()),
            "bwd": oracle.check("dense bwd", np.matmul(wd.T, dy_ob, out=dx), oracle.bwd())}
    np.matmul(dy_ob, x_ib.T, out=gd)
    errs["sddmm"] = oracle.check_grad("dense wgrad", gd[oracle.rows, oracle.cols])
    del oracle
    k = {"fwd": timeit(lambda: np.matmul(wd, x_ib, out=y), cfg, prewarmed=True),
         "bwd": timeit(lambda: np.matmul(wd.T, dy_ob, out=dx), cfg, prewarmed=True),
         "sddmm": timeit(lambda: np.matmul(dy_ob, x_ib.T, out=gd), cfg, prewarmed=True)}
    return {"verify_max_rel_err": errs, "kernels": k}


PEERS = {"sparsekit": sparsekit_peer, "scipy": scipy_peer, "torch": torch_peer,
         "dense": dense_peer, "set-step": set_step_peer}
