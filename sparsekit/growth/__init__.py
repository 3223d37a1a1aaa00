"""Topology-evolution methods behind ``train(..., method=...)``.

Each method is a :class:`~sparsekit.growth.base.GrowthMethod` registered by name; the trainer
calls its hooks after every step and at the end of every epoch.  ``static`` and ``set`` need no
gradient; ``gse`` (sampled gradient, always sparse), ``topkast`` (forward/backward sets, always
sparse) and ``rigl`` (dense gradient in tiles, small layers only) share the schedule of
:mod:`sparsekit.growth.schedule`.
"""

from .base import GrowthMethod, available_methods, get_method, register_method
from .gse import GSE
from .rigl import RigL
from .schedule import GradientGrowth, UpdateSchedule, cosine_drop_fraction
from .set import SET, Static, magnitude_keep_mask
from .topkast import TopKAST

__all__ = ["GSE", "GradientGrowth", "GrowthMethod", "RigL", "SET", "Static", "TopKAST",
           "UpdateSchedule", "available_methods", "cosine_drop_fraction", "get_method",
           "magnitude_keep_mask", "register_method"]
