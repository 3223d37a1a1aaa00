"""Fashion-MNIST with SET: the setup of Curci et al. (2021), truly sparse from the first step.

Full mode trains 784-1000-1000-1000-10 (ε = 20, All-ReLU α = 0.6, dropout 0.3, lr 0.01,
momentum 0.9, weight decay 2e-4, batch 128, ζ = 0.3) for ``--epochs`` epochs (the paper: 100)
and writes a run folder with history, checkpoint and plot.  ``--fast`` trains a smaller network
on 3 000 images for 2 epochs.

    python examples/fashion_mnist_set.py --fast
    python examples/fashion_mnist_set.py --epochs 100 --out runs/fmnist-set

The data comes from Debian's ``dataset-fashion-mnist`` package, ``$SPARSEKIT_DATA`` or
``--data-dir``.
"""

import numpy as np
from _common import fashion_mnist, parser

import sparsekit
from sparsekit.io.dataset import Dataset


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="default 100 (fast: 2)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="run folder (checkpoint, history, plot)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = fashion_mnist(args.data_dir)
    hidden = [1000, 1000, 1000]
    epochs = args.epochs or 100
    if args.fast:
        # A subset (the first 3 000 / 1 000 images) and a smaller network: seconds, not hours.
        data = Dataset(data.x_train[:3000], data.y_train[:3000], data.x_test[:1000],
                       data.y_test[:1000], n_classes=10, name="fashion-mnist-subset",
                       image_shape=data.image_shape)
        hidden, epochs = [256, 256], args.epochs or 2
    sizes = [data.n_features, *hidden, data.n_classes]
    result = sparsekit.train(sizes, data, method="set", epochs=epochs, epsilon=20, zeta=0.3,
                             alpha=0.6, dropout=0.3, lr=0.01, momentum=0.9,
                             weight_decay=2e-4, batch_size=128, seed=args.seed,
                             run_dir=args.out, log=print)
    last = result.history[-1]
    dense = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    nnz = sum(result.model.n_connections)
    print(f"test accuracy {100 * last['test_acc']:.2f}% with {nnz} connections "
          f"({100 * nnz / dense:.1f}% of the dense {dense})")
    if args.out:
        from sparsekit.cli.plot import plot_history

        plot_history(result.history, f"{args.out}/plot.png", result.model, data.image_shape)
    assert np.isfinite(last["test_loss"])


if __name__ == "__main__":
    main()
