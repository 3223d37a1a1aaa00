"""Energy proxy: the floating-point operations a training run actually does, and a dense twin's.

The count follows what each kernel of a step does, from the connection counts and the batch
``B`` (a multiply-add is two operations):

=========================  ==============================  =====================================
part                       sparse (per layer)              dense network of the same shape
=========================  ==============================  =====================================
forward product            ``2 B nnz_fwd``                 ``2 B n_in n_out``
bias, activation, dropout  ``3 B n_out`` (hidden layers;   same
                           the output layer adds the bias
                           only, the loss ``4 B n_out``)
backward to the inputs     ``2 B nnz_fwd + B n_in``        ``2 B n_in n_out + B n_in``
(all but the first layer)  (the product, then the
                           activation derivative)
weight and bias gradient   ``2 B nnz + B n_out``           ``2 B n_in n_out + B n_out``
optimizer update           ``u (nnz + n_out)``             ``u (n_in n_out + n_out)``
=========================  ==============================  =====================================

``u`` is the optimizer's operations per value (momentum SGD 6, Adam 13, 15 with an L2
penalty; :attr:`sparsekit.training.optim.Optimizer.ops_per_value`).
``nnz_fwd`` is the forward pattern's size (Top-KAST's set A; otherwise ``nnz``).  Topology
updates count one operation per value compared, scored or drawn (see :func:`update_flops`); a
dense network has none.  These are the operations of the algorithm, not of a particular
kernel's inner loop: index arithmetic, sampling of integer positions and memory traffic are
not counted, so the figures are a proxy for energy, not a measurement of it.
"""

from __future__ import annotations

import math

#: Operations per parameter of one momentum-SGD step with weight decay (the default ``u``).
OPT_OPS = 6


def _shapes(model):
    """``(n_in, n_out, nnz, nnz_fwd)`` per layer."""
    out = []
    for layer in model.layers:
        w = layer.w
        fwd = getattr(layer, "w_forward", None)
        out.append((w.shape[1], w.shape[0], w.nnz, w.nnz if fwd is None else fwd.nnz))
    return out


def step_flops(model, batch_size: int, opt_ops: int = OPT_OPS) -> tuple[int, int]:
    """``(sparse, dense)`` operations of one training step of ``model`` on ``batch_size`` samples
    (``opt_ops``: the optimizer's operations per value, :attr:`Optimizer.ops_per_value`)."""
    return _step_flops(tuple(_shapes(model)), int(batch_size), int(opt_ops))


def _step_flops(shapes, b: int, opt_ops: int) -> tuple[int, int]:
    """:func:`step_flops` of the layer shapes of :func:`_shapes`."""
    last = len(shapes) - 1
    sparse = dense = 0
    for k, (n_in, n_out, nnz, fwd) in enumerate(shapes):
        full = n_in * n_out
        elementwise = (b * n_out if k == last else 3 * b * n_out)  # bias (+ act, dropout)
        elementwise += 4 * b * n_out if k == last else 0  # softmax and cross-entropy
        elementwise += b * n_out  # bias gradient
        back_in = k > 0
        sparse += (2 * b * fwd + (2 * b * fwd + b * n_in if back_in else 0) + 2 * b * nnz
                   + elementwise + opt_ops * (nnz + n_out))
        dense += (2 * b * full + (2 * b * full + b * n_in if back_in else 0) + 2 * b * full
                  + elementwise + opt_ops * (full + n_out))
    return sparse, dense


def update_flops(model, growth, stats: dict, batch_size: int) -> int:
    """Operations of one topology update that returned ``stats`` (``{"replaced": [...]}``).

    * ``set``: the sign tests and the magnitude selection over every connection of an evolving
      layer (4 per connection) and drawing and scaling each regrown value (3 each);
    * ``gse``, ``topkast``: scoring ``ceil(gamma * n)`` sampled candidates with the sampled
      gradient (``2 B`` each) and selecting among them (2 each), plus the magnitude selection
      (2 per connection);
    * ``rigl``: the dense gradient of the layer (``2 B n_in n_out``) and its selection;
    * other methods: the magnitude selection only.
    """
    replaced = stats.get("replaced")
    if not replaced:
        return 0
    name = getattr(growth, "name", "")
    b = int(batch_size)
    gamma = float(getattr(growth, "gamma", 1.0))
    total = 0
    for (n_in, n_out, nnz, fwd), n_new in zip(_shapes(model), replaced):
        if not n_new:
            continue
        if name == "set":
            total += 4 * nnz + 3 * int(n_new)
        elif name in ("gse", "topkast"):
            pool = nnz if name == "gse" else nnz - fwd
            cand = math.ceil(gamma * max(pool, 0))
            total += (2 * b + 2) * cand + 2 * nnz
        elif name == "rigl":
            total += (2 * b + 1) * n_in * n_out + 2 * nnz
        else:
            total += 2 * nnz
    return total


class FlopCounter:
    """Accumulates :func:`step_flops` and :func:`update_flops` over an epoch.

    ``train()`` calls :meth:`step` after every optimizer step and :meth:`update` after every
    topology update, and puts :meth:`record` (``flops``, ``flops_dense``, ``flops_topology``)
    into the epoch's history record, then :meth:`reset`.
    """

    def __init__(self, batch_size: int, opt_ops: int = OPT_OPS) -> None:
        self.batch_size, self.opt_ops = int(batch_size), int(opt_ops)
        self._last: tuple = (None, (0, 0))  # (shapes key, step_flops) of the latest step
        self.reset()

    def reset(self) -> None:
        self.sparse = self.dense = self.topology = 0

    def step(self, model) -> None:
        # The count changes only with the shapes (every step of an epoch, mostly): computed
        # once per shapes, it costs a few microseconds less of every step.
        key = (tuple(_shapes(model)), self.batch_size, self.opt_ops)
        if key != self._last[0]:
            self._last = (key, _step_flops(*key))
        sparse, dense = self._last[1]
        self.sparse += sparse
        self.dense += dense

    def update(self, model, growth, stats) -> None:
        if stats:
            self.topology += update_flops(model, growth, stats, self.batch_size)

    def record(self) -> dict[str, int]:
        return {"flops": int(self.sparse + self.topology), "flops_dense": int(self.dense),
                "flops_topology": int(self.topology)}


__all__ = ["FlopCounter", "step_flops", "update_flops"]
