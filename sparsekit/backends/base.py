"""The backend protocol: :class:`Backend`, with a generic ``xp`` version of every method.

Shared code (layers, growth methods, the training step) talks only to a backend: its ``xp``
array module and the methods of :class:`Backend`.  Activations are feature-major (``x_ib``:
inputs x batch, ``y_ob``: outputs x batch) and W is a CSR of shape ``(n_out, n_in)``.  The
generic versions here make a new backend correct before it is fast; the CPU and GPU backends
override the hot paths and fall back to ``super()`` for the rest.  Arrays never cross devices
silently: :meth:`Backend.asarray` and :meth:`Backend.to_numpy` are the only ways across.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._align import feature_major_batch
from .._streams import GOLDEN, splitmix
from ..nn.activations import softmax_cross_entropy
from ..nn.csr import CSR, VALUE_DTYPES, array_module, index_dtype_for
from .host import as_count as as_count  # re-exported: the backends below import from base
from .host import sample_absent_host, select_args


class Backend:
    """Base class of the kernel backends. See the module docstring for the contract."""

    name: str = "base"
    xp: Any = np

    # --- moving data ----------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """``x`` as a C-contiguous array on this backend's device (copies only if needed)."""
        if array_module(x) is not self.xp and array_module(x) is not np:
            raise TypeError(
                f"{self.name} backend got an array from another device "
                f"({type(x).__module__}); move it with to_numpy() first"
            )
        return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))

    def to_numpy(self, x) -> np.ndarray:
        """Copy (or view) ``x`` on the host as a NumPy array."""
        return np.asarray(x)

    def feature_major(self, x, idx, dtype, buffers=None):
        """Rows ``idx`` of the batch-major host array ``x`` (dense or ``scipy.sparse`` CSR) as
        a feature-major ``(n_features, len(idx))`` batch of ``dtype`` on this device.  A
        backend may write it into an array it keeps in ``buffers`` (as
        :meth:`mlp_forward`)."""
        return self.asarray(feature_major_batch(x, idx, dtype))

    def check_array(self, name: str, x) -> None:
        """Raise ``TypeError`` naming ``name`` unless ``x`` is an array on this backend's
        device."""
        if array_module(x) is not self.xp:
            raise TypeError(
                f"{name} is a {type(x).__module__} array but the {self.name} backend needs "
                f"{self.xp.__name__} arrays; call backend.asarray({name}) first"
            )
        if not isinstance(x, self.xp.ndarray):
            raise TypeError(f"{name} must be a {self.xp.__name__} array, got "
                            f"{type(x).__name__}")

    def _operand(self, name, x, dtype, n_rows=None):
        """A 2-D activation on this device with W's dtype (and ``n_rows`` rows), C-contiguous."""
        self.check_array(name, x)
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (features x batch), got shape {x.shape}")
        if x.dtype != dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but the weights are {dtype}")
        if n_rows is not None and x.shape[0] != n_rows:
            raise ValueError(f"{name} has {x.shape[0]} rows, expected {n_rows}")
        return self.xp.ascontiguousarray(x)

    def _pair(self, x_ib, dy_ob, w: CSR):
        """Checked ``(x_ib, dy_ob)`` for a product with W: matching rows and batch."""
        x = self._operand("x_ib", x_ib, w.dtype, w.shape[1])
        dy = self._operand("dy_ob", dy_ob, w.dtype, w.shape[0])
        if x.shape[1] != dy.shape[1]:
            raise ValueError(f"x_ib has batch {x.shape[1]} but dy_ob has {dy.shape[1]}")
        return x, dy

    def _sampled_operands(self, x_ib, dy_ob, rows, cols):
        """Checked operands of :meth:`sampled_grad` and the index dtype to use."""
        self.check_array("rows", rows)
        self.check_array("cols", cols)
        for name, arr in (("rows", rows), ("cols", cols)):
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{name} must be an integer array, got {arr.dtype}")
        self.check_array("x_ib", x_ib)
        if x_ib.dtype not in (np.float32, np.float64):
            raise ValueError(f"x_ib must be float32 or float64, got {x_ib.dtype}")
        x = self._operand("x_ib", x_ib, x_ib.dtype)
        dy = self._operand("dy_ob", dy_ob, x.dtype)
        # Any other integer type goes to int64, where an out-of-range value stays out of range.
        idt = np.int32 if (rows.dtype == np.int32 and cols.dtype == np.int32) else np.int64
        return x, dy, idt

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    # --- products -------------------------------------------------------------------------
    def transpose_index(self, w: CSR):
        """W's column index ``(t_indptr, t_rows, t_perm)``, cached on the CSR.

        For input neuron i, ``t_rows[t_indptr[i]:t_indptr[i + 1]]`` are the output rows that
        read it, increasing, and ``t_perm`` their slots in ``w.data``.  The cache lives until the
        pattern changes (``rebuild`` returns a new CSR; ``with_data`` keeps it).
        """
        if w._transpose is None:
            xp = self.xp
            n_rows, n_cols = w.shape
            idt = w.indices.dtype
            # Column-major keys are unique, so the order does not depend on sort stability.
            keys = w.indices.astype(xp.int64) * max(n_rows, 1) + w.row_ids()
            perm = xp.argsort(keys)
            t_indptr = xp.zeros(n_cols + 1, dtype=idt)
            t_indptr[1:] = xp.cumsum(xp.bincount(w.indices, minlength=n_cols)).astype(idt)
            w._transpose = (t_indptr, w.row_ids()[perm].astype(idt), perm.astype(idt))
        return w._transpose

    def matmul(self, x_ib, w: CSR):
        """Forward product ``y_ob = W @ x_ib`` (x_ib: n_in x batch)."""
        x = self._operand("x_ib", x_ib, w.dtype, w.shape[1])
        return _scatter_products(self.xp, w.row_ids(), w.indices, w.data, x, w.shape[0])

    def matmul_t(self, dy_ob, w: CSR):
        """Backward product ``dx_ib = W.T @ dy_ob`` (dy_ob: n_out x batch)."""
        dy = self._operand("dy_ob", dy_ob, w.dtype, w.shape[0])
        return _scatter_products(self.xp, w.indices, w.row_ids(), w.data, dy, w.shape[1])

    def weight_grad(self, x_ib, dy_ob, w: CSR):
        """Gradient on W's pattern, in CSR order: ``g[k] = sum_b dy_ob[row_k, b] * x_ib[col_k, b]``."""
        x, dy = self._pair(x_ib, dy_ob, w)
        return _gathered_dots(x, dy, w.row_ids(), w.indices)

    def sampled_grad(self, x_ib, dy_ob, rows, cols):
        """The same dot products at arbitrary positions ``(rows[j], cols[j])``."""
        x, dy, idt = self._sampled_operands(x_ib, dy_ob, rows, cols)
        r, c = self._candidates(x, dy, rows, cols, idt)
        if r.shape[0]:
            # The list comes from the caller, not from a validated CSR: bounds in one transfer.
            lo_r, hi_r, lo_c, hi_c = (int(v) for v in self.to_numpy(self.xp.stack(
                [r.min(), r.max(), c.min(), c.max()]).astype(self.xp.int64)))
            if lo_r < 0 or hi_r >= dy.shape[0]:
                raise ValueError(f"rows must lie in [0, {dy.shape[0]})")
            if lo_c < 0 or hi_c >= x.shape[0]:
                raise ValueError(f"cols must lie in [0, {x.shape[0]})")
        return _gathered_dots(x, dy, r, c)

    def _candidates(self, x, dy, rows, cols, idt):
        """``(rows, cols)`` of a candidate list as contiguous ``idt`` arrays, shapes checked."""
        if rows.ndim != 1 or cols.shape != rows.shape:
            raise ValueError(f"rows and cols must be 1-D of one length, got {rows.shape} and "
                             f"{cols.shape}")
        if x.shape[1] != dy.shape[1]:
            raise ValueError(f"dy_ob has batch {dy.shape[1]} but x_ib has {x.shape[1]}")
        xp = self.xp
        return (xp.ascontiguousarray(rows.astype(idt, copy=False)),
                xp.ascontiguousarray(cols.astype(idt, copy=False)))

    def backward(self, x_ib, dy_ob, w: CSR, need_dx: bool = True):
        """``(dx_ib or None, grad)``; backends may fuse the two passes."""
        x, dy = self._pair(x_ib, dy_ob, w)
        dx = self.matmul_t(dy, w) if need_dx else None
        return dx, self.weight_grad(x, dy, w)

    # --- whole training passes of an MLP --------------------------------------------------------
    def mlp_forward(self, layers, activations, x_ib, rate: float, seeds, buffers=None):
        """Training forward pass of the layers ``layers`` (:class:`~sparsekit.nn.layers.SparseLayer`)
        with the hidden ``activations`` and dropout ``rate`` (keys ``seeds``, one per hidden layer).

        Returns ``(logits_cb, acts, derivs)``: ``acts[l]`` is the input of layer l (``acts[0]`` is
        ``x_ib``), ``derivs[l]`` hidden layer l's activation derivative with dropout.  A backend
        may write them into arrays it keeps in the dict ``buffers`` (the caller's, reused from
        step to step); this generic version allocates them, one product at a time.
        """
        acts, derivs = [x_ib], []
        a = x_ib
        for layer, act, seed in zip(layers[:-1], activations, seeds):
            a, d = act.forward(self, layer.forward(a), layer.b, rate, seed)
            acts.append(a)
            derivs.append(d)
        out = layers[-1]
        logits = out.forward(a)
        logits += out.b[:, None]
        return logits, acts, derivs

    def mlp_forward_rows(self, layers, activations, x, idx, dtype, rate: float, seeds,
                         buffers=None):
        """:meth:`mlp_forward` of the batch made of rows ``idx`` of the batch-major host array
        ``x``: the training step's forward.  Returns what :meth:`mlp_forward` does, ``acts[0]``
        being the feature-major batch (:meth:`feature_major`'s).  A backend may gather the
        batch inside its pass; this generic version calls :meth:`feature_major`, then
        :meth:`mlp_forward`.
        """
        x_ib = self.feature_major(x, idx, dtype, buffers)
        return self.mlp_forward(layers, activations, x_ib, rate, seeds, buffers)

    def mlp_step(self, layers, activations, x, idx, dtype, rate: float, seeds, loss,
                 keep_dz: bool = False, update=None, buffers=None):
        """A training pass on rows ``idx`` of the batch-major host array ``x``: the forward
        (:meth:`mlp_forward_rows`), ``loss(logits) -> (value, out, dlogits)``, the backward
        (:meth:`mlp_backward`, with ``keep_dz`` and ``update``).

        Returns ``((value, out, dlogits), acts, derivs, (grads, dzs, applied))``: what
        ``loss``, :meth:`mlp_forward_rows` and :meth:`mlp_backward` return.  A backend may run
        it all at once (the CPU backend: in one OpenMP team, with ``loss`` called between the
        passes, or computed by the team itself when it is a
        :class:`~sparsekit.nn.activations.CrossEntropyLoss` of this backend, with the same
        bits); this generic version calls the three in turn.
        """
        logits, acts, derivs = self.mlp_forward_rows(layers, activations, x, idx, dtype, rate,
                                                     seeds, buffers)
        value, out, dlogits = loss(logits)
        backward = self.mlp_backward(layers, acts, derivs, dlogits, keep_dz, update, buffers)
        return (value, out, dlogits), acts, derivs, backward

    def softmax_cross_entropy(self, logits_cb, labels_b):
        """``(loss, probs_cb, dlogits_cb)`` of feature-major logits and int labels, the loss a
        device scalar (:func:`sparsekit.nn.activations.softmax_cross_entropy`, which this
        generic version calls; a backend may compute the same bits its own way)."""
        self._check_loss_operands(logits_cb, labels_b)
        return softmax_cross_entropy(self.xp, logits_cb, labels_b, as_float=False)

    def _check_loss_operands(self, logits_cb, labels_b) -> None:
        """Types and shapes of :meth:`softmax_cross_entropy`'s operands (the labels' values are
        the data loader's to check: reading them here would stall a GPU every step)."""
        self.check_array("logits_cb", logits_cb)
        self.check_array("labels_b", labels_b)
        if logits_cb.ndim != 2 or logits_cb.dtype.kind != "f":
            raise ValueError(f"logits_cb must be a 2-D float array (classes x batch), got "
                             f"shape {logits_cb.shape} and dtype {logits_cb.dtype}")
        if labels_b.ndim != 1 or labels_b.dtype.kind not in "iu":
            raise ValueError(f"labels_b must be a 1-D integer array, got shape "
                             f"{labels_b.shape} and dtype {labels_b.dtype}")
        if labels_b.shape[0] != logits_cb.shape[1]:
            raise ValueError(f"labels_b has {labels_b.shape[0]} labels but logits_cb has a "
                             f"batch of {logits_cb.shape[1]}")

    def mlp_infer(self, layers, activations, x_ib, buffers=None):
        """Logits (classes x batch) of an inference pass: no dropout, nothing kept for a
        backward pass.  This generic version holds only the current layer's arrays, one product
        at a time, so its memory is that of the widest layer; a backend may run all layers at
        once in arrays it keeps in the dict ``buffers`` (the caller's, reused across batches).
        """
        a = x_ib
        for layer, act in zip(layers[:-1], activations):
            # [0]: the derivative is dropped at once, not kept alive into the next layer
            a = act.forward(self, layer.forward(a), layer.b, 0.0, 0)[0]
        logits = layers[-1].forward(a)
        logits += layers[-1].b[:, None]
        return logits

    def infer_batch(self, layers, batch_size: int, activations=()) -> int:
        """Samples per :meth:`mlp_infer` call for a caller that may hold ``batch_size`` samples
        at a time (the generic version: all of them)."""
        return batch_size

    def mlp_backward(self, layers, acts, derivs, dlogits_cb, keep_dz: bool = False, update=None,
                     buffers=None):
        """Gradients of every layer for the logits' gradient ``dlogits_cb``.

        Returns ``(grads, dzs, applied)``: ``grads[l] = (grad_w, grad_b)``; ``dzs[l]`` each
        layer's output gradient when ``keep_dz`` (else None).  ``update``, an optimizer's
        :meth:`~sparsekit.training.optim.Optimizer.backend_rule`, invites the backend to apply
        that update itself (to the state slots of ``state_w`` and ``state_b`` it names);
        ``applied`` says whether it did (never here).
        """
        grads, dzs = [], []
        dz = dlogits_cb
        for i in range(len(layers) - 1, -1, -1):
            dx, gw, gb = layers[i].backward(acts[i], dz, need_dx=i > 0)
            grads.append((gw, gb))
            if keep_dz:  # otherwise each dz is freed as soon as the next one exists
                dzs.append(dz)
            if i > 0:
                dx *= derivs[i - 1]
                dz = dx
        return grads[::-1], (dzs[::-1] if keep_dz else None), False

    def apply_update(self, rule, param, grad, slots) -> bool:
        """Apply an optimizer's update ``rule`` (its
        :meth:`~sparsekit.training.optim.Optimizer.backend_rule`) to ``param`` in place, with
        the state arrays ``slots`` in the order of the optimizer's ``slots``; True when done.
        A backend that cannot (here: never) returns False, and the optimizer updates with its
        own array code; either way the result has the same bits."""
        return False

    # --- elementwise ------------------------------------------------------------------------
    def bias_act_dropout(self, z_ob, bias, slope: float, rate: float, seed: int):
        """Add bias, apply ``x if x > 0 else slope * x`` and inverted dropout.

        Returns ``(a_ob, d_ob)``: activations and their derivative with respect to z.  The
        dropout mask is a counter-based hash of ``seed`` and the element index, identical on
        every backend and thread count.
        """
        xp = self.xp
        self.check_array("z_ob", z_ob)
        self.check_array("bias", bias)
        if z_ob.ndim != 2 or z_ob.dtype not in VALUE_DTYPES:
            raise ValueError(f"z_ob must be a 2-D float32 or float64 array, got {z_ob.dtype} "
                             f"of shape {z_ob.shape}")
        if bias.shape != (z_ob.shape[0],):
            raise ValueError(f"bias has shape {bias.shape}, expected ({z_ob.shape[0]},)")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF  # the same key the CPU kernel takes
        z = z_ob + bias.astype(z_ob.dtype, copy=False)[:, None]
        d = xp.where(z > 0, z.dtype.type(1), z.dtype.type(slope)).astype(z.dtype)
        a = d * z
        if rate > 0:
            n_out, n_batch = z.shape
            o = xp.arange(n_out, dtype=xp.uint64)[:, None]
            j = xp.arange(n_batch, dtype=xp.uint64)[None, :]
            key = xp.uint64(seed) + o * xp.uint64(n_batch) * GOLDEN
            draw = splitmix(xp, key + j * GOLDEN) >> xp.uint64(40)
            keep = draw >= xp.uint64(int(rate * 16777216.0))
            scale = z.dtype.type(1.0 / (1.0 - rate))
            d = xp.where(keep, d * scale, 0).astype(z.dtype)
            a = xp.where(keep, a * scale, 0).astype(z.dtype)
        return a, d

    # --- topology -------------------------------------------------------------------------
    def select(self, values, k: int, largest: bool = True):
        """Indices (int64, increasing) of the ``k`` largest or smallest values.

        Ties at the threshold go to the lowest indices, so the result is deterministic.
        """
        xp = self.xp
        self.check_array("values", values)
        values, k = select_args(xp, values, k)
        n = values.shape[0]
        if k == 0:
            return xp.empty(0, dtype=xp.int64)
        if k == n:
            return xp.arange(n, dtype=xp.int64)
        keys = -values if largest else values
        t = xp.partition(keys, k - 1)[k - 1]
        mask = keys < t
        n_tie = k - int(xp.count_nonzero(mask))
        mask[xp.flatnonzero(keys == t)[:n_tie]] = True
        return xp.flatnonzero(mask).astype(xp.int64)

    def sign_prune_keep(self, values, zeta: float):
        """SET's keep mask: drop the fraction ``zeta`` of the negative and of the positive
        ``values`` closest to zero (exact zeros too), by one selection per sign.

        Ties go to the lowest indices (:meth:`select`), so every backend gives the same mask.
        """
        xp = self.xp
        self.check_array("values", values)
        if not 0 <= zeta <= 1:
            raise ValueError(f"zeta must lie in [0, 1], got {zeta}")
        keep = values != 0
        for sign_mask, largest in ((values < 0, True), (values > 0, False)):
            idx = xp.flatnonzero(sign_mask)
            k = int(zeta * idx.shape[0])
            if k:
                # Negatives closest to zero are the largest ones, positives the smallest.
                keep[idx[self.select(values[idx], k, largest=largest)]] = False
        return keep

    def contains(self, w: CSR, rows, cols):
        """Boolean mask: is ``(rows[j], cols[j])`` a stored position of W?"""
        xp = self.xp
        keys = w.row_ids().astype(xp.int64) * w.shape[1] + w.indices
        q = xp.asarray(rows, dtype=xp.int64) * w.shape[1] + xp.asarray(cols, dtype=xp.int64)
        pos = xp.searchsorted(keys, q)
        pos = xp.minimum(pos, max(keys.shape[0] - 1, 0))
        return (keys[pos] == q) if keys.shape[0] else xp.zeros(q.shape[0], dtype=bool)

    def host_threads(self, values: int) -> int:
        """Threads for host-side NumPy draws of ``values`` numbers (the initial values of new
        connections, :func:`sparsekit.nn.init.init_values`, whose results do not depend on
        it): one here; the CPU backend gives its own count from a measured size on."""
        return 1

    def sample_absent(self, w: CSR, m: int, rng: np.random.Generator, row_weights=None,
                      col_weights=None):
        """``m`` distinct positions not stored in W, sorted by (row, col).

        Uniform over all absent positions, or, with ``row_weights``/``col_weights``, drawn from
        the product of those (non-negative) marginals.  Costs O(nnz + m) memory: candidates are
        drawn in rounds and filtered, never by materialising the n_out x n_in grid.  Draws come
        from ``rng`` on the host, so a seed gives the same positions on every backend.
        """
        rng = np.random.default_rng(rng)  # a Generator as it is; a seed or None makes one
        rows, cols = sample_absent_host(w, m, rng, row_weights, col_weights,
                                        lambda r, c: self.to_numpy(self.contains(
                                            w, self.asarray(r), self.asarray(c))))
        idt = w.indices.dtype
        return self.asarray(rows.astype(idt)), self.asarray(cols.astype(idt))

    def rebuild(self, w: CSR, keep_mask, new_rows, new_cols, new_vals, *states):
        """W with the entries where ``keep_mask`` is false dropped and new ones inserted.

        Returns ``(w_new, [state_new, ...])``: every state array (aligned with ``w.data``) is
        permuted like the values, with 0 at inserted positions.  Raises ``ValueError`` when an
        inserted position is already kept or repeats.
        """
        xp = self.xp
        n_rows, n_cols = w.shape
        keep_mask, new_rows, new_cols, new_vals = _check_rebuild_args(
            self, w, keep_mask, new_rows, new_cols, new_vals, states)
        old_keys = (w.row_ids().astype(xp.int64) * n_cols + w.indices)[keep_mask]
        new_keys = new_rows.astype(xp.int64) * n_cols + new_cols.astype(xp.int64)
        keys = xp.concatenate([old_keys, new_keys])
        src = xp.concatenate([xp.flatnonzero(keep_mask).astype(xp.int64),
                              -1 - xp.arange(new_keys.shape[0], dtype=xp.int64)])
        order = xp.argsort(keys, kind="stable")
        keys, src = keys[order], src[order]
        if keys.shape[0] > 1 and bool(xp.any(keys[1:] == keys[:-1])):
            raise ValueError("rebuild: a new position is already present or repeats")
        nnz = keys.shape[0]
        idt = index_dtype_for(nnz, w.shape)
        rows = keys // n_cols
        indptr = xp.zeros(n_rows + 1, dtype=idt)
        indptr[1:] = xp.cumsum(xp.bincount(rows, minlength=n_rows)).astype(idt)
        indices = (keys % n_cols).astype(idt)
        new_w = CSR(indptr, indices, _take(xp, src, w.data, new_vals), w.shape, check=False)
        return new_w, [_take(xp, src, s, None) for s in states]


def _take(xp, src, old, new_vals):
    out = xp.zeros(src.shape[0], dtype=old.dtype)
    kept = src >= 0
    out[kept] = old[src[kept]]
    if new_vals is not None:
        out[~kept] = new_vals[-1 - src[~kept]]
    return out


def _gathered_dots(x_ib, dy_ob, rows, cols, chunk_elements: int = 1 << 24):
    """``g[j] = sum_b dy_ob[rows[j], b] x_ib[cols[j], b]`` by gathering rows in chunks.

    Each chunk materialises two (chunk, batch) blocks, so memory stays bounded by
    ``chunk_elements`` values whatever the number of positions.
    """
    xp = array_module(x_ib)
    m, n_batch = rows.shape[0], x_ib.shape[1]
    out = xp.zeros(m, dtype=x_ib.dtype)
    if n_batch == 0:
        return out
    step = max(1, chunk_elements // n_batch)
    for s in range(0, m, step):
        e = min(m, s + step)
        out[s:e] = (dy_ob[rows[s:e]] * x_ib[cols[s:e]]).sum(axis=1)
    return out


def _scatter_products(xp, dst, src, vals, operand, n_out, chunk_elements: int = 1 << 24):
    """``out[dst[k], :] += vals[k] * operand[src[k], :]`` over every k, in chunks of the list
    (bounded memory, as :func:`_gathered_dots`).  ``add.at`` sums repeated rows: in list order
    on NumPy, in any order with CuPy's atomics."""
    n_batch = operand.shape[1]
    out = xp.zeros((n_out, n_batch), dtype=operand.dtype)
    if n_batch == 0:
        return out
    step = max(1, chunk_elements // n_batch)
    for s in range(0, vals.shape[0], step):
        e = min(vals.shape[0], s + step)
        xp.add.at(out, dst[s:e], vals[s:e, None] * operand[src[s:e]])
    return out


def _check_rebuild_args(backend, w, keep_mask, new_rows, new_cols, new_vals, states):
    xp = backend.xp
    for name, arr in (("keep_mask", keep_mask), ("new_rows", new_rows),
                      ("new_cols", new_cols), ("new_vals", new_vals)):
        backend.check_array(name, arr)
    if keep_mask.dtype != bool or keep_mask.shape != (w.nnz,):
        raise ValueError(f"keep_mask must be a bool array of length nnz={w.nnz}")
    for name, arr in (("new_rows", new_rows), ("new_cols", new_cols)):
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array, got {arr.dtype}")
    m = new_rows.shape[0]
    if new_cols.shape != (m,) or new_vals.shape != (m,):
        raise ValueError("new_rows, new_cols and new_vals must have the same length")
    for i, s in enumerate(states):
        backend.check_array(f"states[{i}]", s)
        if s.shape != (w.nnz,):
            raise ValueError(f"states[{i}] has shape {s.shape}, expected ({w.nnz},)")
    if m:
        if int(new_rows.min()) < 0 or int(new_rows.max()) >= w.shape[0]:
            raise ValueError(f"new_rows must lie in [0, {w.shape[0]})")
        if int(new_cols.min()) < 0 or int(new_cols.max()) >= w.shape[1]:
            raise ValueError(f"new_cols must lie in [0, {w.shape[1]})")
        if not bool(xp.all(xp.isfinite(new_vals))):
            raise ValueError("new_vals contains NaN or infinite values")
    return keep_mask, new_rows, new_cols, new_vals.astype(w.data.dtype, copy=False)
