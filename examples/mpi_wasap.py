"""WASAP-SGD over MPI: data-parallel sparse training across processes.

Run it under ``mpiexec`` (``pip install 'sparsekit[mpi]'`` brings mpi4py and an MPI library):

    mpiexec -n 2 python examples/mpi_wasap.py --fast
    mpiexec -n 4 python examples/mpi_wasap.py --mode async --epochs 20

Every rank runs this script; rank 0 prints, evaluates and returns the averaged model.  The same
run from the command line: ``mpiexec -n 4 sparsekit train --parallel wasap ...``.
"""

from _common import fashion_mnist, parser, unavailable

import sparsekit
from sparsekit.io.synthetic import make_synthetic


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mode", default="sync", choices=["sync", "async"])
    p.add_argument("--epochs", type=int, default=None, help="default 20 (fast: 4)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    try:
        from sparsekit.parallel import world_rank

        rank = world_rank()
    except ImportError as exc:
        unavailable(f"MPI is not usable here ({exc}); pip install 'sparsekit[mpi]'")
    if args.fast:
        data = make_synthetic(n_samples=2000, n_features=100, n_informative=6,
                              n_clusters_per_class=2, class_sep=2.0, seed=0)
        hidden, epochs = [64, 64], args.epochs or 4
    else:
        data = fashion_mnist(args.data_dir)
        hidden, epochs = [1000, 1000, 1000], args.epochs or 20
    sizes = [data.n_features, *hidden, data.n_classes]
    result = sparsekit.train(sizes, data, parallel="wasap", wasap_mode=args.mode,
                             epochs=epochs, batch_size=64, seed=0,
                             log=print if rank == 0 else None)
    if rank == 0:
        last = result.history[-1]
        print(f"WASAP ({args.mode}): test accuracy {100 * last['test_acc']:.2f}% after "
              f"{last['epoch']} epochs, {sum(result.model.n_connections)} connections")


if __name__ == "__main__":
    main()
