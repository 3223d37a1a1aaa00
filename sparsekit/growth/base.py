"""Growth-method protocol and registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class GrowthMethod:
    """Base class: a method that may change the model's topology during training.

    Hooks return a dict of statistics (added to the epoch's history) or ``None``.
    """

    name = "base"

    def setup(self, model, steps_per_epoch: int, epochs: int,
              rng: np.random.Generator | None = None) -> None:
        """Called by the trainer once before the first step (again on resume), with the run's
        length; methods that schedule by fraction of training or hold state prepare here."""

    def after_step(self, model, step: int, epoch: int, rng: np.random.Generator,
                   cache: Any = None) -> dict | None:
        """Called after each optimizer step; ``step`` counts from 0 over the whole run."""
        return None

    def end_of_epoch(self, model, epoch: int, epochs: int,
                     rng: np.random.Generator) -> dict | None:
        """Called after each epoch's training, before evaluation."""
        return None

    def params(self) -> dict:
        """JSON-serialisable parameters (recorded in history and checkpoints)."""
        return {}

    def state_dict(self) -> dict:
        """What :meth:`setup` cannot re-derive from the model when a run resumes
        (JSON-serialisable; saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take :meth:`state_dict`'s result before the resumed run's :meth:`setup`."""
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, got {sorted(state)}")


_METHODS: dict[str, Callable[..., GrowthMethod]] = {}


def register_method(name: str, factory: Callable[..., GrowthMethod]) -> None:
    _METHODS[name] = factory


def available_methods() -> list[str]:
    """Names accepted by :func:`get_method` and ``train(method=...)``."""
    return sorted(_METHODS)


def get_method(method: str | GrowthMethod, **params) -> GrowthMethod:
    """A growth method by name (``"set"``, ``"static"``, ...) with its parameters."""
    if isinstance(method, GrowthMethod):
        return method
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {available_methods()}")
    try:
        return _METHODS[method](**params)
    except TypeError as exc:  # an unknown keyword or a value of the wrong type: name them
        raise ValueError(f"bad parameters for method {method!r} {params}: {exc}") from None
