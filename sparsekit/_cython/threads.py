"""How many threads the CPU backend gives each kernel: the measured break-even points below
which one thread is faster, and the size up to which the fused backward gathers its gradient."""

from __future__ import annotations

import numpy as np

from ._checks import default_threads

#: The most threads a kernel is given: OpenMP starts every one it is asked for, and tens of
#: thousands exhaust the process (a crash, not an error) long before they could help.
MAX_THREADS = 1024


class ThreadThresholds:
    """The thread counts of :class:`~sparsekit._cython.backend.CpuBackend` (its base class):
    ``num_threads`` for a kernel with enough work, one below the thresholds."""

    #: Below this many multiply-adds a product (or ``sampled_grad``) called on its own runs on
    #: one thread.  Its parallel region wakes the other threads first, and with passive waiting
    #: on a virtual machine that costs 30-70 µs, so two threads only pay from about 2^21-2^22
    #: multiply-adds (``benchmarks/results/thread-breakeven.md``, 2 cores of an AMD EPYC guest:
    #: two threads took 0.26-0.66x the speed of one at 2^15-2^17, 0.66-0.87x at 2^19-2^20,
    #: 0.93-1.08x at 2^21 and 1.07-1.43x from 2^22; ``results/xeon/thread-breakeven.md``, an
    #: Intel Xeon guest: 0.74-0.86x at 2^20.3-2^21.3, 1.00x at 2^22.3, 1.36-1.43x at 2^23.3).
    min_parallel_work = 1 << 22
    #: The same for a whole forward pass, backward pass or training step in one team
    #: (mlp.pyx), in the multiply-adds it does (a step or a backward counts two per connection
    #: and sample, a forward one): its one wake-up is shared by every layer and phase, so a
    #: second thread pays earlier.  Measured per connection and sample (thread-breakeven.md):
    #: steps 0.49-0.67x at 2^15-2^18, 0.99-1.29x at 2^20, 1.12-1.30x at 2^21; forward passes
    #: 0.44-0.60x at 2^15-2^18, 0.95-1.00x at 2^20, 1.05-1.19x at 2^21.
    min_team_work = 1 << 20
    #: Elementwise kernels, tiled transposes and membership tests: below this many units one
    #: thread runs them: 8 elements of a bias + activation + dropout pass or 16 of a transpose
    #: count as one unit, a membership test (a binary search in a row) as 4.  Measured
    #: break-even (thread-breakeven.md): about 2^19 elements for the pass (0.74x at 2^18,
    #: 0.99x at 2^19, 1.17x at 2^21), 2^19-2^20 for the transpose (0.73x at 2^19, 1.49x at
    #: 2^21), 4 000-16 000 membership tests (0.28x at 4 096, 1.57x at 16 384).
    min_parallel_elements = 1 << 16
    #: Topology kernels (transpose index, selection, SET's prune, sampling, rebuild) do little
    #: work per entry and open several parallel regions per call; with passive waiting each
    #: one waits for a thread to wake up.  Below this many entries one thread is faster
    #: (measured on 2 cores, 3000 x 3000 at ε = 20, 120 000 entries: prune 0.27 ms on one
    #: thread vs 0.47 ms on two, transpose index 0.34 vs 0.43, sampling 36 000 positions 0.65
    #: vs 0.75; at 400 000 entries two threads win 1.2-1.7x).
    min_parallel_entries = 1 << 18
    #: Initial values drawn on the host (:func:`sparsekit.nn.init.init_values`, for SET's
    #: regrowth and a model's first values): below this many one thread draws them.  Starting
    #: a helper thread took about 120 µs on 2 cores of an Intel Xeon guest, and 2^17 values
    #: about 450 µs on one thread; 300 000 (SET at 10 000^2, 1 %) took 1.09 ms.
    min_parallel_draws = 1 << 17
    #: Layers up to this many connections get their gradient gathered into W's order after the
    #: fused backward on more than one thread, instead of scattered into it (mlp.hh
    #: ``sk_gathers``; it costs an index and a gradient array more per layer): measured on 2
    #: cores of an Intel Xeon guest, the default network's step went from 1.69 to 1.57 ms,
    #: while at 10 000^2 (400 000 connections, a gradient past L2) ordered claims alone gave the
    #: same time as the gather.
    gather_max_nnz = 1 << 18

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = num_threads

    @property
    def num_threads(self) -> int:
        """Threads of the kernels with enough work (set None or 0 for the default: the
        cores this process may run on, or ``OMP_NUM_THREADS``)."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value) -> None:
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, np.integer))):
            raise TypeError(f"num_threads must be an integer, got {value!r}")
        if value is not None and not 0 <= value <= MAX_THREADS:
            raise ValueError(f"num_threads must lie in [0, {MAX_THREADS}] (0: the default), "
                             f"got {value}")
        self._num_threads = int(value) if value else default_threads()

    def _threads(self, work: int, floor: int | None = None) -> int:
        """Threads for ``work``: all of them from ``floor`` (default ``min_parallel_work``)."""
        return self.num_threads if work >= (self.min_parallel_work if floor is None
                                            else floor) else 1

    def _team_threads(self, work: int) -> int:
        return self._threads(work, self.min_team_work)

    def _element_threads(self, elements: int) -> int:
        return self._threads(elements, self.min_parallel_elements)

    def _topology_threads(self, entries: int) -> int:
        return self._threads(entries, self.min_parallel_entries)

    def host_threads(self, values: int) -> int:
        """Threads for host-side NumPy draws of ``values`` numbers (see
        :meth:`sparsekit.backends.Backend.host_threads`)."""
        return self._threads(values, self.min_parallel_draws)
