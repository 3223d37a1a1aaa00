"""GSE vs SET: gradient-guided growth against random regrowth, same network, budget and seeds.

Both runs share the architecture, the number of connections and the seed; they differ only in
how pruned connections are regrown (SET: uniformly at random, values from the init
distribution; GSE: the largest gradients among sampled absent connections, values 0).

    python examples/gse_vs_set.py --fast        # Madelon-like synthetic data, seconds
    python examples/gse_vs_set.py --epochs 30   # Fashion-MNIST, the default network
"""

import time

from _common import fashion_mnist, parser, unavailable

import sparsekit
from sparsekit.io.synthetic import make_synthetic


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="default 30 (fast: 6)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    missing = {"set", "gse"} - set(sparsekit.available_methods())
    if missing:
        unavailable(f"growth method(s) {sorted(missing)} not in this sparsekit "
                    f"(available: {sparsekit.available_methods()})")
    if args.fast:
        data = make_synthetic(n_samples=1600, n_features=200, n_informative=8,
                              n_clusters_per_class=2, class_sep=2.0, seed=0)
        hidden, epochs = [128, 128], args.epochs or 6
    else:
        data = fashion_mnist(args.data_dir)
        hidden, epochs = [1000, 1000, 1000], args.epochs or 30
    sizes = [data.n_features, *hidden, data.n_classes]
    print(f"{data.name}: layers {sizes}, {epochs} epochs, seeds {args.seeds}")
    print(f"{'method':<6} {'seed':>4} {'test acc':>9} {'s/epoch':>8} {'connections':>12}")
    for method in ("set", "gse"):
        for seed in args.seeds:
            t0 = time.perf_counter()
            result = sparsekit.train(sizes, data, method=method, epochs=epochs, seed=seed,
                                     batch_size=64 if args.fast else 128)
            per_epoch = (time.perf_counter() - t0) / epochs
            acc = result.history[-1]["test_acc"]
            print(f"{method:<6} {seed:>4} {100 * acc:>8.2f}% {per_epoch:>8.2f} "
                  f"{sum(result.model.n_connections):>12}")


if __name__ == "__main__":
    main()
