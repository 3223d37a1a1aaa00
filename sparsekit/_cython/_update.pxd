# An optimizer's update rule (sparsekit.training.optim's backend_rule) as the C++ kernels take
# it (epilogue.hh's SkUpdate): parsed here once for the fused backward (mlp.pyx) and for an
# update on its own (elementwise.apply_update).
cdef extern from "epilogue.hh" nogil:
    ctypedef struct SkUpdate:
        int kind
        double lr, momentum, weight_decay
        int coupled, nesterov
        double adam[9]
        int decoupled
    int SK_UPDATE_SGD, SK_UPDATE_ADAM
    void sk_apply_update[T](T* p, const T* g, T* m, T* v, Py_ssize_t n, const SkUpdate& s)


cdef inline SkUpdate* fill_update(SkUpdate* rule, update, str name) except? NULL:
    """``rule`` filled from ``("sgd", lr, momentum, weight_decay, coupled, nesterov)`` or
    ``("adam", decoupled, *Adam._constants)``, or NULL for None; a ValueError naming the
    argument ``name`` for anything else."""
    if update is None:
        return NULL
    kind = update[0] if update else None
    if kind == "sgd" and len(update) == 6:
        rule.kind = SK_UPDATE_SGD
        rule.lr, rule.momentum, rule.weight_decay = (float(update[1]), float(update[2]),
                                                     float(update[3]))
        rule.coupled, rule.nesterov = bool(update[4]), bool(update[5])
    elif kind == "adam" and len(update) == 11:
        rule.kind = SK_UPDATE_ADAM
        rule.decoupled = bool(update[1])
        for k in range(9):
            rule.adam[k] = float(update[2 + k])
    else:
        raise ValueError(f"{name} must be ('sgd', lr, momentum, weight_decay, coupled, "
                         f"nesterov) or ('adam', decoupled, 9 constants), got {update!r}")
    return rule
