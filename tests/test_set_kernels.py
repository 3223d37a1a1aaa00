"""The CPU kernels of one SET step at sizes where they split their work (several row chunks,
several threads): each against a NumPy/SciPy oracle and the same for 1 to 4 threads."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from sparsekit._cython import spmm


def _transpose_oracle(w: sp.csr_matrix):
    """Column index from SciPy: CSC order (rows increasing within a column) and the CSR slot of
    each entry (a stable sort of the column ids)."""
    cols = w.indices.astype(np.int64)
    perm = np.argsort(cols, kind="stable")
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    t_indptr = np.zeros(w.shape[1] + 1, np.int64)
    np.cumsum(np.bincount(cols, minlength=w.shape[1]), out=t_indptr[1:])
    return t_indptr, rows[perm], perm


def _layer(n_out, n_in, density, seed, empty_row_frac=0.0, skew=False):
    rng = np.random.default_rng(seed)
    w = sp.random(n_out, n_in, density, format="csr", random_state=rng, dtype=np.float32)
    if empty_row_frac:
        keep_rows = rng.random(n_out) >= empty_row_frac
        w = sp.diags(keep_rows.astype(np.float32)) @ w
        w.eliminate_zeros()
    if skew:  # most entries in the first rows: chunks by nnz, not by rows
        w = sp.vstack([sp.random(8, n_in, 0.9, random_state=rng, dtype=np.float32), w]).tocsr()
    w.sort_indices()
    return w


LAYERS = [
    # (chunks of at least 32k entries: 150 000 entries give up to 4)
    (500, 600, 0.5, {}),
    (4000, 40, 0.9, {"empty_row_frac": 0.3}),  # many empty rows, few columns
    (100_000, 1, 1.0, {}),  # one column
    (1, 70_000, 1.0, {}),  # one row: one chunk whatever the threads
    (1000, 300, 0.3, {"skew": True}),
    # past 8192 columns: buckets of columns first (a partial last bucket, several chunks)
    (300, 20_000, 0.02, {"empty_row_frac": 0.2}),
    (100, 9000, 0.2, {"skew": True}),
    (40, 8193, 0.9, {}),
    (50, 60, 0.0, {}),  # nnz = 0
    (0, 5, 0.0, {}),  # no rows
    (7, 0, 0.0, {}),  # no columns
]


@pytest.mark.parametrize("n_out,n_in,density,kw", LAYERS)
@pytest.mark.parametrize("idt", [np.int32, np.int64])
def test_transpose_index_matches_scipy_for_any_thread_count(n_out, n_in, density, kw, idt):
    w = _layer(n_out, n_in, density, 3, **kw)
    want = _transpose_oracle(w)
    for threads in (1, 2, 3, 4):
        got = spmm.transpose_index(w.indptr.astype(idt), w.indices.astype(idt), w.shape[1],
                                   threads)
        for g, e in zip(got, want, strict=True):
            assert g.dtype == idt
            np.testing.assert_array_equal(g, e)


def test_transpose_index_with_one_crowded_column():
    """Most entries in one column past 8192 columns: one bucket holds nearly everything (the
    scratch of the bucket pass stays within nnz entries)."""
    rng = np.random.default_rng(8)
    crowded = sp.csr_matrix((np.ones(60_000, np.float32), (np.arange(60_000),
                             np.full(60_000, 9000))), shape=(60_000, 10_000))
    w = (crowded + sp.random(60_000, 10_000, 5e-5, format="csr", random_state=rng)).tocsr()
    w.sort_indices()
    want = _transpose_oracle(w)
    for threads in (1, 2, 3):
        got = spmm.transpose_index(w.indptr, w.indices, w.shape[1], threads)
        for g, e in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, e)


def test_transpose_index_refuses_bad_threads():
    w = _layer(10, 10, 0.5, 1)
    with pytest.raises(ValueError, match="num_threads must be >= 0"):
        spmm.transpose_index(w.indptr, w.indices, 10, -1)


# --- per-row uniform sampler ------------------------------------------------------------------
SAMPLER_CASES = [
    # (n_out, n_in, density, new per row): rows short and few new (vector rank sort and
    # rank -> column count), rows over 1024 entries (the prefix walk), over 64 new per row
    # (std::sort and the prefix walk), empty rows, one column, nnz = 0
    (300, 400, 0.05, 6),
    (6, 3000, 0.5, 20),
    (40, 2000, 0.02, 150),
    (200, 300, 0.1, 10, 0.4),
    (3000, 1, 0.3, 0.5),
    (50, 80, 0.0, 5),
]


@pytest.mark.parametrize("case", SAMPLER_CASES)
@pytest.mark.parametrize("idt", [np.int32, np.int64])
def test_sampler_equals_its_numpy_twin_for_any_thread_count(case, idt):
    """Distinct, absent, sorted positions, exactly those of the NumPy twin
    (``host.sample_uniform_rows``) for a seed, whatever the thread count."""
    from reference import check_sample_absent

    from sparsekit._cython import sampling
    from sparsekit.backends.host import sample_uniform_rows

    n_out, n_in, density, per_row, *empty = case
    w = _layer(n_out, n_in, density, 4, empty_row_frac=empty[0] if empty else 0.0)
    m = min(int(per_row * n_out), n_out * n_in - w.nnz)
    want = sample_uniform_rows(w.indptr.astype(np.int64), w.indices.astype(np.int64), n_in, m,
                               np.random.default_rng(11))
    for threads in (1, 2, 3):
        rows, cols = sampling.sample_absent_uniform(w.indptr.astype(idt), w.indices.astype(idt),
                                                    n_in, m, np.random.default_rng(11), threads)
        assert rows.dtype == idt and cols.dtype == idt
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(cols, want[1])
    check_sample_absent(w, rows, cols, m)


# --- rebuild ----------------------------------------------------------------------------------
REBUILD_CASES = [
    # (n_out, n_in, density, new per row, empty-row fraction): m >= 65 536 splits the checks
    (2000, 1000, 0.04, 40, 0.0),
    (3000, 500, 0.05, 25, 0.3),
    (100_000, 1, 0.5, 0.4, 0.0),  # one column
    (300, 200, 0.0, 5, 0.0),  # nnz = 0
    (400, 300, 0.1, 0, 0.0),  # m = 0
]


def _same_rebuild(got, want, want_mom, want_slot, vals):
    """``rebuild_csr``'s result (with ``src`` and one state) equals the oracle's bit for bit."""
    indptr, indices, data, src, state = got
    np.testing.assert_array_equal(indptr, want.indptr)
    np.testing.assert_array_equal(indices, want.indices)
    np.testing.assert_array_equal(data, want.data)
    np.testing.assert_array_equal(state, want_mom)
    is_new = src < 0
    np.testing.assert_array_equal(np.where(is_new, 0, src), want_slot)
    np.testing.assert_array_equal(vals[-1 - src[is_new]], data[is_new])


@pytest.mark.parametrize("n_out,n_in,density,per_row,empty", REBUILD_CASES)
@pytest.mark.parametrize("idt", [np.int32, np.int64])
def test_rebuild_equals_the_oracle_for_any_thread_count(n_out, n_in, density, per_row, empty,
                                                         idt):
    """Pattern, values, the fused state and the ``src`` of the other states equal the SciPy
    oracle bit for bit for 1 to 3 threads; new positions out of order give None."""
    import reference as ref

    from sparsekit._cython import rebuild
    from sparsekit.backends.host import sample_uniform_rows

    w = _layer(n_out, n_in, density, 5, empty_row_frac=empty)
    rng = np.random.default_rng(6)
    keep = rng.random(w.nnz) < 0.7
    m = min(int(per_row * n_out), n_out * n_in - w.nnz)
    rows, cols = sample_uniform_rows(w.indptr.astype(np.int64), w.indices.astype(np.int64), n_in,
                                     m, rng)
    vals = rng.standard_normal(m).astype(np.float32)
    mom = rng.standard_normal(w.nnz).astype(np.float32)
    want, (want_mom, want_slot) = ref.rebuild(w, keep, rows, cols, vals, mom,
                                              np.arange(w.nnz, dtype=np.int64))
    args = (w.indptr.astype(idt), w.indices.astype(idt), keep.view(np.uint8), rows.astype(idt),
            cols.astype(idt), n_in, w.data, vals)
    for threads in (1, 2, 3):
        got = rebuild.rebuild_csr(*args, True, threads, mom)
        assert got[0].dtype == got[1].dtype == idt
        _same_rebuild(got, want, want_mom, want_slot, vals)
        _, _, data2, src2, state2 = rebuild.rebuild_csr(*args, False, threads, None)
        assert src2 is None and state2 is None
        np.testing.assert_array_equal(data2, want.data)
    if m > 1:
        swapped = np.r_[m - 1, np.arange(1, m - 1), 0]
        assert rebuild.rebuild_csr(w.indptr.astype(idt), w.indices.astype(idt),
                                   keep.view(np.uint8), rows[swapped].astype(idt),
                                   cols[swapped].astype(idt), n_in, w.data, vals[swapped],
                                   False, 2) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("idt", [np.int32, np.int64])
def test_rebuild_of_rows_of_every_size_equals_the_oracle(idt, dtype):
    """Rows on both sides of the sizes where the merge changes method (up to 64 new and 1024
    old entries: slots counted; beyond: the two-way walk), with new positions that reuse the
    columns of dropped entries, give the oracle's pattern, values, state and sources."""
    import reference as ref

    from sparsekit._cython import rebuild

    rng = np.random.default_rng(21)
    n_in = 3000
    # old rows also on and around whole 16-entry vectors (the AVX-512 merge's blocks), kept
    # shares of 70 %, none and all
    old_lens = [0, 1, 15, 16, 17, 40, 64, 1023, 1024, 1025, 1900]
    new_lens = [0, 1, 12, 63, 64, 65, 100]
    indptr, indices, keep, rows, cols = [0], [], [], [], []
    for r, (n_old, n_new) in enumerate((a, b) for a in old_lens for b in new_lens):
        row = np.sort(rng.choice(n_in, n_old, replace=False))
        kept = rng.random(n_old) < (0.7, 0.0, 1.0)[r % 3]
        dropped = row[~kept]
        absent = np.setdiff1d(np.arange(n_in), row)
        # a third of the new positions (when there are enough) where a dropped entry was
        reuse = rng.choice(dropped, min(len(dropped), n_new // 3), replace=False)
        fresh = rng.choice(absent, n_new - len(reuse), replace=False)
        indices.append(row)
        keep.append(kept)
        indptr.append(indptr[-1] + n_old)
        rows.append(np.full(n_new, r))
        cols.append(np.sort(np.concatenate([reuse, fresh])))
    n_out = len(indptr) - 1
    data = rng.standard_normal(indptr[-1]).astype(dtype)
    w = sp.csr_matrix((data, np.concatenate(indices), np.array(indptr)), shape=(n_out, n_in))
    keep, rows, cols = np.concatenate(keep), np.concatenate(rows), np.concatenate(cols)
    vals = rng.standard_normal(rows.shape[0]).astype(dtype)
    mom = rng.standard_normal(w.nnz).astype(dtype)
    want, (want_mom, want_slot) = ref.rebuild(w, keep, rows, cols, vals, mom,
                                              np.arange(w.nnz, dtype=np.int64))
    for threads in (1, 2):
        got = rebuild.rebuild_csr(w.indptr.astype(idt), w.indices.astype(idt),
                                  keep.view(np.uint8), rows.astype(idt), cols.astype(idt), n_in,
                                  w.data, vals, True, threads, mom)
        _same_rebuild(got, want, want_mom, want_slot, vals)
        # without src: the fused state alone (the momentum SGD case), and no state
        for state in (mom, None):
            indptr_, indices_, data_, src_, state_ = rebuild.rebuild_csr(
                w.indptr.astype(idt), w.indices.astype(idt), keep.view(np.uint8),
                rows.astype(idt), cols.astype(idt), n_in, w.data, vals, False, threads, state)
            assert src_ is None
            np.testing.assert_array_equal(indptr_, want.indptr)
            np.testing.assert_array_equal(indices_, want.indices)
            np.testing.assert_array_equal(data_, want.data)
            if state is None:
                assert state_ is None
            else:
                np.testing.assert_array_equal(state_, want_mom)
    # a new position on a kept entry is refused, in a counted row and in a walked one
    for r in (5 * len(new_lens) + 3, 10 * len(new_lens) + 5):  # 40 old / 63 new, 1900 / 65
        lo, hi = w.indptr[r], w.indptr[r + 1]
        k = lo + int(np.flatnonzero(keep[lo:hi])[0])
        bad_cols = cols.copy()
        at = int(np.flatnonzero(rows == r)[0])
        bad_cols[at] = w.indices[k]
        order = np.lexsort((bad_cols, rows))
        if len(np.unique(rows * n_in + bad_cols)) < len(rows):
            continue  # the column was one of the new ones already
        with pytest.raises(ValueError, match="already present or repeats"):
            got = rebuild.rebuild_csr(w.indptr.astype(idt), w.indices.astype(idt),
                                      keep.view(np.uint8), rows[order].astype(idt),
                                      bad_cols[order].astype(idt), n_in, w.data, vals[order],
                                      False, 1)
            if got is None:  # the caller's path: unsorted gives None, sorted it raises
                raise AssertionError("sorted positions were reported unsorted")


def test_rebuild_refuses_bad_positions():
    from sparsekit._cython import rebuild

    w = _layer(300, 400, 0.5, 7)
    keep = np.ones(w.nnz, np.uint8)
    rows = np.arange(300, dtype=np.int32).repeat(300)
    cols = np.tile(np.arange(300, dtype=np.int32), 300)
    vals = np.zeros(rows.shape[0], np.float32)
    bad_cols = cols.copy()
    bad_cols[-1] = 400
    with pytest.raises(ValueError, match="new positions must lie in"):
        rebuild.rebuild_csr(w.indptr, w.indices, keep, rows, bad_cols, 400, w.data, vals, False, 2)
    with pytest.raises(ValueError, match="already present or repeats"):  # present positions
        rebuild.rebuild_csr(w.indptr, w.indices, keep, rows, cols, 400, w.data, vals, False, 2)
