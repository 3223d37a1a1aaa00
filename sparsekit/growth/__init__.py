"""Topology-evolution methods behind ``train(..., method=...)``.

Each method is a :class:`~sparsekit.growth.base.GrowthMethod` registered by name; the trainer
calls its hooks after every step and at the end of every epoch.
"""

from .base import GrowthMethod, available_methods, get_method, register_method
from .set import SET, Static, magnitude_keep_mask

__all__ = ["GrowthMethod", "SET", "Static", "available_methods", "get_method",
           "magnitude_keep_mask", "register_method"]
