"""The ``sparsekit`` command line (``sparsekit train``, ``sparsekit evaluate``)."""

from .main import main

__all__ = ["main"]
