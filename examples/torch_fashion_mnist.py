"""Fashion-MNIST in a plain PyTorch loop: the paper's network as one sparsekit.torch.SparseMLP.

The network of Curci et al. (2021), 784-1000-1000-1000-10 at Erdős–Rényi ε = 20 with All-ReLU
(α = 0.6) and dropout 0.3, trained with ``torch.optim.SGD`` (lr 0.01, momentum 0.9, weight
decay 2e-4, batch 128) while :class:`sparsekit.torch.DynamicSparsity` runs SET (ζ = 0.3) once
per epoch.  The loop, the optimizer and the loss are PyTorch's; the layers hold only their
connections and run sparsekit's kernels, a whole pass at a time.  Prints test accuracy and
seconds per epoch.  ``--fast`` trains 256-wide hidden layers on 3 000 images for 2 epochs.

    python examples/torch_fashion_mnist.py --fast
    python examples/torch_fashion_mnist.py --epochs 10 --threads 2

The data comes from Debian's ``dataset-fashion-mnist`` package, ``$SPARSEKIT_DATA`` or
``--data-dir``.
"""

import time

from _common import fashion_mnist, parser, unavailable

try:
    import torch
    import torch.nn.functional as F

    from sparsekit.torch import DynamicSparsity, SparseMLP
except ImportError as exc:  # the example needs the torch extra
    unavailable(f"{exc} (pip install 'sparsekit[torch]')")



def accuracy(net, x, y, batch: int = 2048) -> float:
    net.eval()
    with torch.no_grad():
        right = sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                    for i in range(0, len(x), batch))
    net.train()
    return right / len(x)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="default 10 (fast: 2)")
    p.add_argument("--threads", type=int, default=None, help="torch's (and sparsekit's) threads")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = fashion_mnist(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_tr, y_tr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_te, y_te = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    hidden, epochs = [1000, 1000, 1000], args.epochs or 10
    if args.fast:
        x_tr, y_tr, x_te, y_te = x_tr[:3000], y_tr[:3000], x_te[:1000], y_te[:1000]
        hidden, epochs = [256, 256], args.epochs or 2
    net = SparseMLP([x_tr.shape[1], *hidden, 10], 20.0, activation="allrelu", alpha=0.6,
                    dropout=0.3, seed=args.seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    steps = len(x_tr) // 128
    dyn = DynamicSparsity(net, opt, "set", every=steps, zeta=0.3, seed=args.seed)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x_tr))
        for s in range(steps):
            idx = perm[s * 128:(s + 1) * 128]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
            dyn.step()
        seconds = time.perf_counter() - t0
        print(f"epoch {epoch}: test accuracy {100 * accuracy(net, x_te, y_te):.2f}% "
              f"({seconds:.2f} s, {sum(layer.nnz for layer in net.layers)} connections)",
              flush=True)


if __name__ == "__main__":
    main()
