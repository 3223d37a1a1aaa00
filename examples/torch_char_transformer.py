"""A character-level transformer in PyTorch with truly sparse MLP and attention projections.

The text is the Python language reference that ships with Python itself
(``pydoc_data.topics``, about 460 000 characters), so nothing is downloaded.  Two models train
with the same seed, data order and optimizer (AdamW): one dense, one whose block projections
(attention q/k/v/out and the MLP) are :class:`sparsekit.torch.SparseLinear` layers evolved by a
sparsekit growth method through :class:`sparsekit.torch.DynamicSparsity`.  The embeddings and
the output head stay dense.  Both print validation loss in bits per character as they go, and
with ``--plot`` the two curves are drawn.

    python examples/torch_char_transformer.py --fast          # a tiny run, seconds
    python examples/torch_char_transformer.py                 # d=128, 2 blocks: minutes on CPU
    python examples/torch_char_transformer.py --method set --plot curves.png
"""

import math
import time

from _common import parser, unavailable

try:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from sparsekit.torch import DynamicSparsity, SparseLinear, sparsify
except ImportError as exc:  # the example needs the torch extra
    unavailable(f"{exc} (pip install 'sparsekit[torch]')")


def load_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP, every projection an ``nn.Linear``."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, d: int, blocks: int, heads: int, context: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(blocks)))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.norm(self.blocks(x)))


def batches(data, context: int, batch: int, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, data.shape[0] - context - 1, (batch,), generator=gen)
        rows = start[:, None] + torch.arange(context + 1)
        chunk = data[rows]
        yield chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def val_bpc(model, data, context: int, n_batches: int = 8) -> float:
    model.eval()
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
              for x, y in batches(data, context, 32, n_batches, seed=12345)]
    model.train()
    return sum(losses) / len(losses) / math.log(2)


def train(args, train_data, val_data, vocab: int, sparse: bool):
    torch.manual_seed(args.seed)
    model = CharTransformer(vocab, args.d, args.blocks, args.heads, args.context)
    dyn = None
    if sparse:
        sparsify(model, epsilon=args.epsilon, skip="head", seed=args.seed, fan_in="actual")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    if sparse:
        dyn = DynamicSparsity(model, opt, args.method, every=args.every,
                              total_steps=args.steps, seed=args.seed)
    curve, t0 = [], time.perf_counter()
    for step, (x, y) in enumerate(batches(train_data, args.context, args.batch, args.steps,
                                          args.seed), start=1):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if dyn is not None:
            dyn.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, val_bpc(model, val_data, args.context)))
    seconds = time.perf_counter() - t0
    block_weights = sum(m.nnz if isinstance(m, SparseLinear) else m.weight.numel()
                        for m in model.blocks.modules()
                        if isinstance(m, (SparseLinear, nn.Linear)))
    return curve, seconds, block_weights


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--method", default="gse", choices=["set", "gse", "rigl", "topkast"])
    p.add_argument("--epsilon", type=float, default=None, help="ER sparsity (default 16)")
    p.add_argument("--steps", type=int, default=None, help="default 1500 (fast: 40)")
    p.add_argument("--every", type=int, default=None, help="topology update period in steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--plot", default=None, help="write the two curves to this image")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fast = args.fast
    args.d, args.blocks, args.heads = (64, 1, 2) if fast else (128, 2, 4)
    args.context, args.batch = (32, 16) if fast else (64, 16)
    args.steps = args.steps or (40 if fast else 1500)
    args.every = args.every or max(1, args.steps // 20)
    args.eval_every = max(1, args.steps // (4 if fast else 15))
    args.epsilon = args.epsilon or (8.0 if fast else 16.0)
    args.lr = 3e-3
    text = load_text()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * data.shape[0])
    print(f"text: {data.shape[0]} characters of pydoc_data.topics, {len(chars)} symbols; "
          f"model d={args.d}, {args.blocks} blocks, context {args.context}, {args.steps} steps")
    results = {}
    for name, sparse in (("dense", False), (f"sparse ({args.method})", True)):
        curve, seconds, weights = train(args, data[:split], data[split:], len(chars), sparse)
        results[name] = curve
        print(f"{name:<16} val bits/char {curve[-1][1]:.3f}  block weights {weights:>9}  "
              f"{seconds / args.steps * 1e3:6.1f} ms/step")
    print(f"{'step':>6} " + " ".join(f"{n:>16}" for n in results))
    for i, (step, _) in enumerate(results["dense"]):
        print(f"{step:>6} " + " ".join(f"{c[i][1]:>16.3f}" for c in results.values()))
    if args.plot:
        from sparsekit._compat import import_matplotlib

        plt = import_matplotlib()
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in results.items():
            ax.plot(*zip(*curve), label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("validation bits per character")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"curves written to {args.plot}")


if __name__ == "__main__":
    main()
