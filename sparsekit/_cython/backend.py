"""The CPU backend: the protocol of :mod:`sparsekit.backends` on the Cython + OpenMP kernels."""

from __future__ import annotations

import numpy as np

from ..backends.base import Backend, _check_rebuild_args, _take, as_count, select_args
from ..nn.activations import CrossEntropyLoss, cross_entropy_of
from ..nn.csr import CSR, VALUE_DTYPES, index_dtype_for
from . import elementwise, mlp, rebuild, sampling, sddmm, select, spmm
from .threads import ThreadThresholds
from .workspace import batch_buffer as _batch_buffer
from .workspace import batch_rows as _batch_rows
from .workspace import buffer as _buffer
from .workspace import keep_plan, kept_plan
from .workspace import layer_arrays as _layer_arrays
from .workspace import transpose_inverse as _transpose_inverse


class CpuBackend(ThreadThresholds, Backend):
    """Cython kernels on NumPy arrays.

    Parameters
    ----------
    num_threads : int, optional
        OpenMP threads per kernel, 0 to 1024; default (None or 0) ``OMP_NUM_THREADS`` or the
        usable cores.  Results do not depend on it: every output element is computed by one
        thread in a fixed order.

    Examples
    --------
    >>> from sparsekit.backends import CpuBackend
    >>> CpuBackend(num_threads=1).num_threads
    1
    """

    name = "cpu"
    xp = np

    def feature_major(self, x, idx, dtype, buffers=None):
        if (buffers is None or not isinstance(x, np.ndarray) or x.ndim != 2
                or not isinstance(idx, np.ndarray) or idx.ndim != 1 or idx.dtype.kind not in "iu"):
            return super().feature_major(x, idx, dtype, buffers)
        out = _buffer(buffers, "batch", (x.shape[1], idx.shape[0]), np.dtype(dtype))
        if x.dtype != out.dtype or not x.flags.c_contiguous:
            np.copyto(out, x[idx].T, casting="unsafe")
            return out
        # The rows are scattered over x: gather them whole (streaming), then transpose in
        # cache-sized tiles (NumPy's strided copy of the transpose is ~3x slower at 3072 x 100).
        rows = _buffer(buffers, "batch_rows", (idx.shape[0], x.shape[1]), x.dtype)
        np.take(x, idx, axis=0, out=rows)
        elementwise.transpose_into(rows, out, self._element_threads(out.size >> 4))
        return out

    def transpose_index(self, w: CSR):
        """W's column index (cached on the CSR until its pattern changes)."""
        if w._transpose is None:
            w._transpose = spmm.transpose_index(w.indptr, w.indices, w.shape[1],
                                                self._topology_threads(w.nnz))
        return w._transpose

    def matmul(self, x_ib, w: CSR):
        x = self._operand("x_ib", x_ib, w.dtype, w.shape[1])
        return spmm.matmul(w.indptr, w.indices, w.data, x, w.shape[1],
                           self._threads(w.nnz * x.shape[1]))

    def matmul_t(self, dy_ob, w: CSR):
        dy = self._operand("dy_ob", dy_ob, w.dtype, w.shape[0])
        t_indptr, t_rows, t_perm = self.transpose_index(w)
        return spmm.matmul_t(t_indptr, t_rows, t_perm, w.data, dy, w.shape[0],
                             self._threads(w.nnz * dy.shape[1]))

    def weight_grad(self, x_ib, dy_ob, w: CSR):
        x, dy = self._pair(x_ib, dy_ob, w)
        return sddmm.weight_grad(w.indptr, w.indices, x, dy, w.shape[1],
                                 self._threads(w.nnz * x.shape[1]))

    def backward(self, x_ib, dy_ob, w: CSR, need_dx: bool = True):
        x, dy = self._pair(x_ib, dy_ob, w)
        t_indptr, t_rows, t_perm = self.transpose_index(w)
        nt = self._threads(2 * w.nnz * x.shape[1])
        # Past one thread the gradient is gathered into W's order, as in the step's backward.
        t_inv = (_transpose_inverse(w, (t_indptr, t_rows, t_perm))
                 if nt != 1 and w.nnz <= self.gather_max_nnz else None)
        return spmm.backward(t_indptr, t_rows, t_perm, w.data, x, dy, w.shape[0], need_dx,
                             t_inv, nt)

    def sampled_grad(self, x_ib, dy_ob, rows, cols):
        x, dy, idt = self._sampled_operands(x_ib, dy_ob, rows, cols)
        # Its candidates are split statically, so the first thread always waits for the woken
        # one: two threads pay from about twice a product's work (thread-breakeven.md: 0.89x
        # at 2^21, 1.20x at 2^22).
        return sddmm.sampled_grad(x, dy, np.ascontiguousarray(rows, dtype=idt),
                                  np.ascontiguousarray(cols, dtype=idt),
                                  self._threads(rows.shape[0] * x.shape[1] // 2))

    # --- whole passes in one OpenMP team (mlp.pyx) ---------------------------------------------
    def _fusable(self, layers, x_ib, activations=()) -> bool:
        """Whether mlp.pyx can run these layers: one value and index type, no Top-KAST forward
        set, piecewise-linear activations, a non-empty batch; anything else takes the generic
        pass (one product at a time), which gives the same results."""
        if x_ib.ndim != 2 or x_ib.shape[1] == 0 or not self._fusable_layers(layers, activations):
            return False
        return isinstance(x_ib, np.ndarray) and x_ib.dtype == layers[0].w.dtype

    @staticmethod
    def _fusable_layers(layers, activations) -> bool:
        if not layers or len(layers) > mlp.MAX_LAYERS:
            return False
        w0 = layers[0].w
        return (all(a.piecewise for a in activations)
                and all(layer.w_forward is None and layer.w.dtype == w0.dtype
                        and layer.w.indices.dtype == w0.indices.dtype for layer in layers))

    def _pass_threads(self, layers, n_batch: int) -> int:
        return self._team_threads(sum(layer.nnz for layer in layers) * n_batch)

    def mlp_forward(self, layers, activations, x_ib, rate: float, seeds, buffers=None):
        if not self._fusable(layers, x_ib, activations):
            return super().mlp_forward(layers, activations, x_ib, rate, seeds, buffers)
        return self._fused_forward(layers, activations, x_ib, rate, seeds, buffers)

    def _gather_rows(self, layers, activations, x, idx, dtype, buffers):
        """``idx`` as int64 when the passes can gather rows ``idx`` of ``x`` themselves (a
        fusable model, a C-contiguous ``x`` of its dtype, indices in range), else None: the
        generic path then keeps NumPy's casts, indexing rules and errors."""
        if not self._can_gather(layers, activations, x, dtype, buffers):
            return None
        return _batch_rows(x, idx)

    def _can_gather(self, layers, activations, x, dtype, buffers) -> bool:
        """:meth:`_gather_rows`'s conditions on everything but the indices."""
        return (buffers is not None and isinstance(x, np.ndarray) and x.dtype == np.dtype(dtype)
                and x.flags.c_contiguous
                and self._fusable(layers, x, activations)  # x: 2-D, the weights' dtype
                and x.shape[1] == layers[0].in_features)

    def _batch_buffers(self, x, rows, buffers, ld=None):
        """The feature-major batch (rows ``ld`` apart, see :func:`workspace.batch_buffer`) and
        the scratch of its gather (see :meth:`mlp_forward_rows`)."""
        x_ib = _batch_buffer(buffers, "batch", x.shape[1], rows.shape[0], x.dtype, ld)
        scratch = _buffer(buffers, "batch_rows", (rows.shape[0], x.shape[1]), x.dtype)
        return x_ib, (x, rows, scratch)

    def mlp_forward_rows(self, layers, activations, x, idx, dtype, rate: float, seeds,
                         buffers=None):
        rows = self._gather_rows(layers, activations, x, idx, dtype, buffers)
        if rows is None:
            return super().mlp_forward_rows(layers, activations, x, idx, dtype, rate, seeds,
                                            buffers)
        # The batch is gathered in the forward's team: its copy of the scattered rows runs on
        # every thread, and a thread that wakes late joins it rather than the first layer.
        x_ib, gather = self._batch_buffers(x, rows, buffers)
        return self._fused_forward(layers, activations, x_ib, rate, seeds, buffers, gather)

    def mlp_step(self, layers, activations, x, idx, dtype, rate: float, seeds, loss,
                 keep_dz: bool = False, update=None, buffers=None):
        plan = self._step_plan(layers, activations, x, idx, dtype, update, buffers)
        rows = None if plan is None else _batch_rows(x, idx)
        if rows is None:
            return super().mlp_step(layers, activations, x, idx, dtype, rate, seeds, loss,
                                    keep_dz, update, buffers)
        # One team for the whole step (mlp.step): the loss runs on this thread between the
        # passes while the others wait awake, instead of being woken again for the backward.
        update = update if plan.fused_update else None
        outs, derivs = plan.outs, plan.derivs
        # Labels: the team computes the softmax cross-entropy itself, and mlp.step returns it.
        labels = self._step_labels(loss, outs[-1])
        result = []

        def top_gradient():
            result.append(loss(outs[-1]))
            dlogits = result[0][2]
            fits = (isinstance(dlogits, np.ndarray) and dlogits.dtype == plan.dtype
                    and dlogits.shape == outs[-1].shape and dlogits.flags.c_contiguous)
            return dlogits if fits else None  # else the backward runs after the team

        done = mlp.step(self._pass_arrays(layers, update), plan.x_ib, outs, derivs, plan.slopes,
                        list(seeds), float(rate), (x, rows, plan.scratch),
                        None if labels is not None else top_gradient, plan.dzs[:-1], plan.gws,
                        plan.gbs, update, self._team_threads(plan.work), labels)
        if labels is not None:
            result.append(done)  # (value, probs, dlogits)
        value, out, dlogits = result[0]
        acts = [plan.x_ib, *outs[:-1]]
        if done is None:
            return (value, out, dlogits), acts, derivs, self.mlp_backward(
                layers, acts, derivs, dlogits, keep_dz, update, buffers)
        dzs = [*plan.dzs[:-1], dlogits]
        return ((value, out, dlogits), acts, derivs,
                (list(zip(plan.gws, plan.gbs)), (dzs if keep_dz else None), update is not None))

    def _step_labels(self, loss, logits):
        """The labels as int64 when ``loss`` is this backend's softmax cross-entropy and the
        step's team may compute it itself (``mlp.step``'s ``labels``: integers, at least 2
        samples, each a class of ``logits``, and NumPy's exp and log loops at hand); None to
        call ``loss``, which also reports what is wrong with labels that do not qualify."""
        if type(loss) is not CrossEntropyLoss or loss.backend is not self:
            return None
        labels = loss.labels_b
        n_classes, n_batch = logits.shape
        if (not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu"
                or labels.shape != (n_batch,) or n_batch < 2
                or not mlp.has_own_loss(logits.dtype)):
            return None
        # A data set's labels may be uint8 or int32; a uint64 past 2**63 turns negative here
        # and is left to the call back, which refuses it.
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        return labels if elementwise.indices_below(labels, n_classes) else None

    def _step_plan(self, layers, activations, x, idx, dtype, update, buffers):
        """What :meth:`mlp_step` decides and allocates before a step (whether the step may
        run in one team, the update in it, the buffers), kept in ``buffers`` for the next step
        of the same shapes (``workspace.StepPlan``); None when the step must take the generic
        path.

        The key holds every property those depend on, so a kept plan is what recomputing
        would give; the buffers are the dict's own (``workspace.buffer`` drops the plans when
        it grows one), and the model's arrays are read anew at every step, so the plan keeps
        nothing alive.  Recomputing it every step took 10-20 us (``benchmarks/step_overhead.py``
        measures it with the loss kernel and the kept flop count: 23 of a tiny network's 59 us,
        about 45 of the Fashion-MNIST network's).
        """
        if (buffers is None or not isinstance(idx, np.ndarray) or idx.ndim != 1
                or not isinstance(x, np.ndarray) or len(layers) > mlp.MAX_STEP_LAYERS):
            return None
        key = (idx.shape[0], np.dtype(dtype), None if update is None else update[0], x.dtype,
               x.shape[1:], x.flags.c_contiguous, tuple(activations),
               tuple((w.shape, w.nnz, w.dtype, w.indices.dtype, layer.w_forward is None,
                      tuple(layer.state_w), tuple(layer.state_b))
                     for layer in layers for w in (layer.w,)))
        plan = kept_plan(buffers, key)
        if plan is not None:
            return plan
        if idx.shape[0] == 0 or not self._can_gather(layers, activations, x, dtype, buffers):
            return None
        # Every batch array of the step has its rows a whole number of 64-byte vectors apart
        # (the arrays the step returns are views of those): at batch 100 or 200, rows batch
        # values apart start off a cache line and cost 1.1-1.4x per sample (batch-sizes.md).
        n_batch = idx.shape[0]
        ld = mlp.batch_stride(n_batch, np.dtype(dtype).itemsize)
        x_ib, (_, _, scratch) = self._batch_buffers(x, idx, buffers, ld)
        outs, derivs = self._forward_buffers(layers, n_batch, buffers, ld=ld)
        dzs, gws, gbs = self._backward_buffers(layers, n_batch, buffers, ld)
        return keep_plan(
            buffers, key, dtype=np.dtype(dtype),
            fused_update=self._update_rule(layers, update) is not None, x_ib=x_ib, scratch=scratch,
            outs=outs, derivs=derivs, dzs=dzs, gws=gws, gbs=gbs,
            slopes=[a.slope for a in activations],
            work=2 * n_batch * sum(layer.nnz for layer in layers))

    def softmax_cross_entropy(self, logits_cb, labels_b):
        # Two passes in C around NumPy's exp and log: the same bits as the generic version's
        # dozen NumPy calls in about 60 % of the time (8 vs 13 us at 10 x 128), which matters
        # because the loss runs on one thread while the step's team waits for it.
        self._check_loss_operands(logits_cb, labels_b)
        got = None
        if logits_cb.dtype in VALUE_DTYPES:
            got = elementwise.softmax_cross_entropy(np.ascontiguousarray(logits_cb), labels_b)
        if got is None:  # the kernel checked the labels' range; NumPy's indexing would wrap
            if labels_b.shape[0] and not 0 <= labels_b.min() <= labels_b.max() < \
                    logits_cb.shape[0]:
                raise ValueError(f"labels_b must lie in [0, {logits_cb.shape[0]}), got values "
                                 f"from {labels_b.min()} to {labels_b.max()}")
            return super().softmax_cross_entropy(logits_cb, labels_b)
        probs, dlogits, picked = got
        return cross_entropy_of(np, picked, as_float=False), probs, dlogits

    def _fused_forward(self, layers, activations, x_ib, rate, seeds, buffers, gather=None,
                       derivatives: bool = True):
        """:meth:`mlp_forward` in one team (mlp.pyx), for layers that :meth:`_fusable` admits
        (``gather``: ``x_ib`` is filled first, see :func:`mlp.forward`; ``derivatives=False``:
        the hidden layers' derivatives are neither written nor returned)."""
        n_batch = x_ib.shape[1]
        x = np.ascontiguousarray(x_ib)  # aligned when it comes from feature_major (faster)
        outs, derivs = self._forward_buffers(layers, n_batch, {} if buffers is None else buffers,
                                             derivatives)
        mlp.forward([_layer_arrays(layer) for layer in layers], x, outs, derivs,
                    [a.slope for a in activations], list(seeds), float(rate),
                    self._pass_threads(layers, n_batch), gather)
        return outs[-1], [x_ib, *outs[:-1]], derivs

    @staticmethod
    def _forward_buffers(layers, n_batch: int, buffers, derivatives: bool = True, ld=None):
        """Every layer's output and every hidden layer's derivative (None for each when not
        ``derivatives``), kept in ``buffers``, rows ``ld`` apart."""
        dt = layers[0].w.dtype
        outs = [_batch_buffer(buffers, ("out", i), layer.out_features, n_batch, dt, ld)
                for i, layer in enumerate(layers)]
        derivs = [_batch_buffer(buffers, ("deriv", i), layer.out_features, n_batch, dt, ld)
                  if derivatives else None for i, layer in enumerate(layers[:-1])]
        return outs, derivs

    #: Samples per fused inference pass: at most ``infer_block``, as many as keep a pass's
    #: input to the widest layer in ``infer_bytes`` (its gathered rows then stay in L2), never
    #: fewer than ``infer_min`` (past the caches short rows only multiply the gathers), whole
    #: 64-byte vectors (a 127-float row makes gathered loads straddle lines).  Measured by
    #: benchmarks/infer_passes.py (results/infer-passes.md).
    infer_block, infer_min, infer_bytes = 256, 64, 1 << 20

    def infer_batch(self, layers, batch_size: int, activations=()) -> int:
        if not self._fusable_layers(layers, activations):
            return batch_size
        return self._infer_samples([layers[0].in_features, *(lyr.out_features for lyr in layers)],
                                   layers[0].w.dtype.itemsize, batch_size)

    @classmethod
    def _infer_samples(cls, widths, itemsize: int, batch_size: int) -> int:
        """:meth:`infer_batch` for layer ``widths`` (inputs first); the memory estimate's too."""
        widest = max(widths)
        step = min(cls.infer_block, max(cls.infer_min, cls.infer_bytes // (widest * itemsize)))
        # Every layer's output, counted twice (for the derivatives the pass wrote before
        # 04627fa; kept so the pass sizes are those infer_passes.py measured), within the
        # one-product path's ~3 widest arrays:
        step = min(batch_size, step, 3 * widest * batch_size // max(1, 2 * sum(widths[1:])))
        lanes = 64 // itemsize
        return max(1, step - step % lanes if step >= lanes else step)

    def mlp_infer(self, layers, activations, x_ib, buffers=None):
        if not self._fusable(layers, x_ib, activations):
            return super().mlp_infer(layers, activations, x_ib, buffers)
        # The training pass at dropout 0 without the derivatives: the same row kernels and
        # epilogue as the generic path, so the same bits, in one team, with one output row
        # written per neuron instead of two (benchmarks/results/infer-passes.md).
        logits, _, _ = self._fused_forward(layers, activations, x_ib, 0.0,
                                           [0] * (len(layers) - 1), buffers, derivatives=False)
        return logits

    def mlp_backward(self, layers, acts, derivs, dlogits_cb, keep_dz: bool = False, update=None,
                     buffers=None):
        if not self._fusable(layers, acts[0]) or dlogits_cb.dtype != layers[0].w.dtype:
            return super().mlp_backward(layers, acts, derivs, dlogits_cb, keep_dz, update,
                                        buffers)
        update = self._update_rule(layers, update)
        n_batch = acts[0].shape[1]
        arrays, dzs, gws, gbs = self._backward_arrays(layers, n_batch, update,
                                                      {} if buffers is None else buffers,
                                                      mlp.row_stride(acts, n_batch))
        dzs[-1] = np.ascontiguousarray(dlogits_cb)
        mlp.backward(arrays, list(acts), list(derivs), dzs, gws, gbs, update,
                     self._pass_threads(layers, 2 * n_batch))
        dzs[-1] = dlogits_cb  # the caller's own array (growth methods compare identities)
        return list(zip(gws, gbs)), (dzs if keep_dz else None), update is not None

    #: The layer state slots each kind of update rule reads and writes (the optimizers'
    #: ``slots`` in sparsekit.training.optim), as mlp.pyx's ``mom_*`` and ``sq_*`` arrays.
    _update_slots = {"sgd": ("momentum",), "adam": ("exp_avg", "exp_avg_sq")}

    def apply_update(self, rule, param, grad, slots) -> bool:
        # The fused update's kernel on one array (a step that could not fuse it: a gradient
        # hook, clipping, WASAP's server, a model the passes cannot run); arrays it does not
        # take (another dtype, strided, read-only) are left to the optimizer's NumPy code.
        names = self._update_slots.get(rule[0]) if rule else None
        arrays = (param, grad, *slots)
        if (names is None or len(slots) != len(names) or param.dtype not in VALUE_DTYPES
                or not all(isinstance(a, np.ndarray) and a.ndim == 1 and a.flags.c_contiguous
                           and a.dtype == param.dtype and a.shape == param.shape
                           for a in arrays)
                or not all(a.flags.writeable for a in (param, *slots))):
            return False
        elementwise.apply_update(tuple(rule), param, grad, list(slots),
                                 self._element_threads(param.shape[0]))
        return True

    @classmethod
    def _update_rule(cls, layers, update):
        """``update``, or None when this backend cannot apply it: another kind, or layers that
        hold another optimizer's state."""
        if update is None:
            return None
        slots = cls._update_slots.get(update[0])
        if slots is None or not all(name in layer.state_w and name in layer.state_b
                                    for layer in layers for name in slots):
            return None
        return update

    def _backward_arrays(self, layers, n_batch: int, update, buffers, ld=None):
        """What mlp.backward takes besides the activations: :meth:`_pass_arrays` and
        :meth:`_backward_buffers`."""
        return (self._pass_arrays(layers, update),
                *self._backward_buffers(layers, n_batch, buffers, ld))

    def _pass_arrays(self, layers, update):
        """Each layer's arrays with its transposed index (and the state ``update`` writes)."""
        arrays = []
        slots = () if update is None else self._update_slots[update[0]]
        for layer in layers:
            transpose = self.transpose_index(layer.w)
            arrays.append(_layer_arrays(layer, transpose))
            if self.num_threads > 1 and layer.nnz <= self.gather_max_nnz:
                arrays[-1]["t_inv"] = _transpose_inverse(layer.w, transpose)
            for prefix, name in zip(("mom", "sq"), slots):
                arrays[-1][f"{prefix}_w"] = layer.state_w[name]
                arrays[-1][f"{prefix}_b"] = layer.state_b[name]
        return arrays

    @staticmethod
    def _backward_buffers(layers, n_batch: int, buffers, ld=None):
        """The hidden layers' dz buffers, rows ``ld`` apart (the last entry, the logits'
        gradient, left None) and the gradient buffers."""
        dt = layers[0].w.dtype
        dzs = [_batch_buffer(buffers, ("dz", i), layer.out_features, n_batch, dt, ld)
               for i, layer in enumerate(layers[:-1])] + [None]
        gws = [_buffer(buffers, ("grad_w", i), (layer.nnz,), dt)
               for i, layer in enumerate(layers)]
        gbs = [_buffer(buffers, ("grad_b", i), (layer.out_features,), dt)
               for i, layer in enumerate(layers)]
        return dzs, gws, gbs

    def bias_act_dropout(self, z_ob, bias, slope: float, rate: float, seed: int):
        self.check_array("z_ob", z_ob)
        if z_ob.dtype not in VALUE_DTYPES:
            raise ValueError(f"z_ob must be float32 or float64, got {z_ob.dtype}")
        z = self._operand("z_ob", z_ob, z_ob.dtype)
        b = np.ascontiguousarray(bias, dtype=z.dtype)
        return elementwise.bias_act_dropout(z, b, float(slope), float(rate),
                                            int(seed) & 0xFFFFFFFFFFFFFFFF,
                                            self._element_threads(z.size >> 3))

    def select(self, values, k: int, largest: bool = True):
        self.check_array("values", values)
        v, k = select_args(np, np.ascontiguousarray(values), k)
        return select.select(v, k, bool(largest), self._topology_threads(v.shape[0]))

    def sign_prune_keep(self, values, zeta: float):
        """SET's keep mask in one kernel (see :func:`sparsekit.growth.set.magnitude_keep_mask`)."""
        self.check_array("values", values)
        v = np.ascontiguousarray(values)
        if v.ndim != 1 or v.dtype not in VALUE_DTYPES:
            raise ValueError(f"values must be a 1-D float32/float64 array, got {v.dtype} "
                             f"with shape {v.shape}")
        return select.sign_prune_keep(v, float(zeta), self._topology_threads(v.shape[0]))

    def contains(self, w: CSR, rows, cols):
        return sampling.contains(w.indptr, w.indices, np.ascontiguousarray(rows, np.int64),
                                 np.ascontiguousarray(cols, np.int64),
                                 self._element_threads(len(rows) * 4))

    def sample_absent(self, w: CSR, m: int, rng: np.random.Generator, row_weights=None,
                      col_weights=None):
        m = as_count("m", m)
        rng = np.random.default_rng(rng)  # a Generator as it is; a seed or None makes one
        n_rows, n_cols = w.shape
        total = n_rows * n_cols
        if (row_weights is None and col_weights is None and 0 <= m <= total - w.nnz
                and total > 4 * (w.nnz + m)):
            # Uniform on a sparse layer: per-row sampling, already in CSR order.  (Weighted
            # draws and nearly full layers take the shared host path.)
            return sampling.sample_absent_uniform(w.indptr, w.indices, n_cols, m, rng,
                                                  self._topology_threads(w.nnz + m))
        return super().sample_absent(w, m, rng, row_weights, col_weights)

    def rebuild(self, w: CSR, keep_mask, new_rows, new_cols, new_vals, *states):
        keep_mask, new_rows, new_cols, new_vals = _check_rebuild_args(
            self, w, keep_mask, new_rows, new_cols, new_vals, states)
        m = new_rows.shape[0]
        nnz = int(np.count_nonzero(keep_mask)) + m
        idt = index_dtype_for(nnz, w.shape)
        indptr, indices = w.indptr.astype(idt, copy=False), w.indices.astype(idt, copy=False)
        nr = np.ascontiguousarray(new_rows, dtype=idt)  # in bounds (checked), so exact
        nc = np.ascontiguousarray(new_cols, dtype=idt)
        vals = np.ascontiguousarray(new_vals)
        keep = np.ascontiguousarray(keep_mask).view(np.uint8)
        nt = self._topology_threads(nnz)
        # The first state of W's value dtype (momentum) rides along in the merge; any other
        # takes the slot map ``src``.
        fused = next((i for i, s in enumerate(states) if s.dtype == w.data.dtype), None)
        want_src = len(states) > (fused is not None)
        state = None if fused is None else np.ascontiguousarray(states[fused])
        # One pass merges the pattern and the values; new positions in (row, col) order (as
        # sample_absent gives them) skip the sort.
        got = rebuild.rebuild_csr(indptr, indices, keep, nr, nc, w.shape[1], w.data, vals,
                                  want_src, nt, state)
        if got is None:
            order = np.lexsort((nc, nr))
            got = rebuild.rebuild_csr(indptr, indices, keep, nr[order], nc[order], w.shape[1],
                                      w.data, vals[order], want_src, nt, state)
            if got is None:  # still not strictly increasing once sorted: a repeat
                raise ValueError("rebuild: a new position is already present or repeats")
        out_indptr, out_indices, data, src, fused_state = got
        new_w = CSR(out_indptr, out_indices, data, w.shape, check=False)
        # The kernel gathers float states; any other dtype (a counter, a flag) takes NumPy's path.
        out = [fused_state if i == fused else
               rebuild.gather(src, np.ascontiguousarray(s), None, nt)
               if s.dtype in VALUE_DTYPES else _take(np, src, s, None)
               for i, s in enumerate(states)]
        return new_w, out

