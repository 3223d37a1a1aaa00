"""Training plots: loss, accuracy, connections and neurons per layer, input connection map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._compat import import_matplotlib


def input_connection_map(model, image_shape=None) -> np.ndarray:
    """Number of connections leaving each input feature (reshaped to ``image_shape``)."""
    w = model.layers[0].w
    counts = np.bincount(model.backend.to_numpy(w.indices), minlength=w.shape[1])
    return counts.reshape(image_shape) if image_shape else counts


def plot_history(history: list[dict], path, model=None, image_shape=None) -> Path:
    """Write a PNG summarising a run; returns its path."""
    plt = import_matplotlib()
    epochs = [r["epoch"] for r in history]
    has_map = model is not None and image_shape is not None
    fig, axes = plt.subplots(1, 4 if has_map else 3, figsize=(18 if has_map else 14, 4))
    ax = axes[0]
    ax.plot(epochs, [r["train_loss"] for r in history], label="train (dropout on)")
    if "test_loss" in history[0]:
        ax.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax.set(title="cross-entropy", xlabel="epoch")
    ax.legend()
    ax = axes[1]
    ax.plot(epochs, [100 * r["train_acc"] for r in history], label="train (dropout on)")
    if "test_acc" in history[0]:
        ax.plot(epochs, [100 * r["test_acc"] for r in history], label="test")
    ax.set(title="accuracy (%)", xlabel="epoch")
    ax.legend()
    ax = axes[2]
    conns = np.array([r["connections"] for r in history])
    neurons = np.array([r["neurons"][1:-1] for r in history])
    for i in range(conns.shape[1]):
        ax.plot(epochs, conns[:, i], label=f"connections W{i + 1}")
    ax.set(title="connections / neurons per layer", xlabel="epoch", yscale="log")
    for i in range(neurons.shape[1]):
        ax.plot(epochs, neurons[:, i], linestyle="--", label=f"neurons h{i + 1}")
    ax.legend(fontsize=7)
    if has_map:
        ax = axes[3]
        im = ax.imshow(input_connection_map(model, image_shape), cmap="viridis")
        ax.set(title="connections per input pixel")
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
