"""sparsekit: truly sparse neural network training.

Weights live as CSR matrices from initialisation to checkpoint, so memory and time grow with
the number of connections, not with layer width squared.
"""

from .backends import Backend, available_backends, get_backend, register_backend, use_backend
from .growth import available_methods, get_method
from .io.checkpoint import load_checkpoint, save_checkpoint
from .nn.csr import CSR
from .nn.init import erdos_renyi
from .nn.layers import SparseLayer
from .nn.model import SparseMLP
from .training.loop import TrainResult, train
from .training.memory_estimate import estimate_memory

__version__ = "0.1.0"

__all__ = [
    "CSR", "Backend", "SparseLayer", "SparseMLP", "TrainResult", "available_backends",
    "available_methods", "erdos_renyi", "estimate_memory", "get_backend", "get_method",
    "load_checkpoint",
    "register_backend", "save_checkpoint", "train", "use_backend", "load_dataset",
    "SparseMLPClassifier", "SparseMLPRegressor",
]

# Imported on first access so that `import sparsekit` never imports scikit-learn.
_SKLEARN = ("SparseMLPClassifier", "SparseMLPRegressor")


def __getattr__(name):
    # Datasets pull in optional readers; import them on first use only.
    if name in ("load_dataset", "datasets"):
        import importlib

        datasets = importlib.import_module(".io.datasets", __name__)
        return datasets.load_dataset if name == "load_dataset" else datasets
    if name in _SKLEARN:
        import importlib

        return getattr(importlib.import_module(".sklearn", __name__), name)
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")
