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


def merge_equal(series: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Series that are equal at every epoch become one, labelled ``"a = b"``, so that none is
    hidden under another on the plot."""
    merged: dict[str, np.ndarray] = {}
    for label, values in series.items():
        same = next((k for k, v in merged.items() if np.array_equal(v, values)), None)
        if same is None:
            merged[label] = values
        else:
            merged[f"{same} = {label}"] = merged.pop(same)
    return merged


def _legend_below(ax, n: int) -> None:
    # Below the axes, outside them: a legend inside covered the curves.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(n, 2), frameon=False,
              fontsize=8)


def plot_history(history: list[dict], path, model=None, image_shape=None) -> Path:
    """Write a PNG summarising a run; returns its path.

    Panels: cross-entropy, accuracy, connections per layer (log scale), neurons per hidden
    layer, and with ``model`` and ``image_shape`` the connections of each input pixel.  The
    epoch axis has integer ticks; series equal at every epoch are drawn once with a joint
    label; legends sit below the panels.
    """
    from matplotlib.ticker import MaxNLocator

    plt = import_matplotlib()
    epochs = np.array([r["epoch"] for r in history])
    marker = "o" if len(epochs) <= 30 else None  # a one-epoch run still shows its points
    has_map = model is not None and image_shape is not None
    n_panels = 5 if has_map else 4
    fig, axes = plt.subplots(1, n_panels, figsize=(4.3 * n_panels, 4.4))
    conns = np.array([r["connections"] for r in history])
    neurons = np.array([r["neurons"][1:-1] for r in history])
    panels = [
        ("cross-entropy", None, {"train (dropout on)": [r["train_loss"] for r in history],
                                 "test": [r.get("test_loss") for r in history]}),
        ("accuracy (%)", None, {"train (dropout on)": [100 * r["train_acc"] for r in history],
                                "test": [100 * r["test_acc"] if "test_acc" in r else None
                                         for r in history]}),
        ("connections per layer", "log",
         {f"W{i + 1}": conns[:, i] for i in range(conns.shape[1])}),
        ("neurons per hidden layer", None,
         {f"h{i + 1}": neurons[:, i] for i in range(neurons.shape[1])}),
    ]
    styles, markers = ["-", "--", "-.", ":"], ["o", "s", "^", "D", "v"]
    for ax, (title, scale, series) in zip(axes, panels):
        series = {k: np.asarray(v, dtype=float) for k, v in series.items()
                  if all(x is not None for x in v)}
        series = merge_equal(series)
        for i, (label, values) in enumerate(series.items()):
            # Earlier series wider and underneath: nearly equal ones stay visible as a band.
            width = 1.2 + 2.4 * (len(series) - 1 - i) / max(len(series) - 1, 1)
            ax.plot(epochs, values, label=label, linestyle=styles[i % len(styles)],
                    linewidth=width, marker=marker and markers[i % len(markers)],
                    markersize=2 + width, alpha=0.9, zorder=2 + i)
        ax.set(title=title, xlabel="epoch")
        if scale:
            ax.set_yscale(scale)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if series:
            _legend_below(ax, len(series))
        else:
            ax.text(0.5, 0.5, "no hidden layer", ha="center", va="center",
                    transform=ax.transAxes)
    if has_map:
        ax = axes[-1]
        im = ax.imshow(input_connection_map(model, image_shape), cmap="viridis")
        ax.set(title="connections per input pixel")
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
