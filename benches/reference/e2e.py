"""End-to-end PyTorch twins of digitlab's `e2e_*` benchmark workloads (used by bench.py).

Each function does, in a plain PyTorch script with a DataLoader, the whole protocol
the digitlab side runs through its CLI on real MNIST ($DIGITLAB_DATA/mnist, IDX files,
gzipped or not), data loading included:

- e2e_mlp_sweep: `digitlab sweep --config configs/mlp_mnist.toml`: MLP
  784-256-256-128-128-10 with batch norm, inputs in [-1, 1], seeded 80/20 split, Adam
  with a per-step cosine decay, batch 100, 5 epochs for each lr in {0.001, 0.01, 0.1}
  (validation after every epoch), the best lr retrained on train + validation, tested once.
- e2e_mlp_wide: `digitlab train --config configs/mlp_wide.toml --set train.epochs=1`:
  MLP 784-3136-1568-10, SGD lr 0.1 with cosine decay, batch 32, 90/10 split, one epoch,
  validation, test.
- e2e_transfer224: `digitlab transfer --config benches/configs/e2e_transfer224.toml`:
  frozen ResNet-18 at 224 px, a linear head trained 5 epochs with Adam at batch 64;
  here the backbone runs again every epoch, as the coursework's code does.
"""
import gzip
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def _idx(path):
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rb") as f:
                data = f.read()
            dims = data[3]
            shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
            return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    raise SystemExit(f"MNIST file {path}[.gz] not found (set DIGITLAB_DATA)")


def load_mnist():
    root = os.environ.get("DIGITLAB_DATA")
    if not root:
        raise SystemExit("DIGITLAB_DATA is not set: the e2e workloads need real MNIST")
    d = os.path.join(root, "mnist")
    xs = _idx(os.path.join(d, "train-images-idx3-ubyte"))
    ys = _idx(os.path.join(d, "train-labels-idx1-ubyte"))
    xt = _idx(os.path.join(d, "t10k-images-idx3-ubyte"))
    yt = _idx(os.path.join(d, "t10k-labels-idx1-ubyte"))

    def norm(x):
        # "symmetric": x / 255 * 2 - 1, flattened to 784.
        return torch.from_numpy(x.reshape(len(x), -1)).float().mul_(2.0 / 255.0).sub_(1.0)

    return norm(xs), torch.from_numpy(ys.astype(np.int64)), norm(xt), torch.from_numpy(yt.astype(np.int64))


def mlp(hidden, batch_norm):
    dims = [784] + list(hidden)
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers.append(nn.Linear(a, b))
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(dims[-1], 10))
    return nn.Sequential(*layers)


def evaluate(model, x, y, batch=1000):
    model.eval()
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            out = model(x[s : s + batch])
            loss += F.cross_entropy(out, y[s : s + batch], reduction="sum").item()
            correct += (out.argmax(1) == y[s : s + batch]).sum().item()
    model.train()
    return correct / len(x), loss / len(x)


def fit(model, opt, x, y, epochs, batch, val=None, seed=42):
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=g)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    history = []
    for _ in range(epochs):
        model.train()
        total, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            total += loss.item() * len(xb)
            correct += (out.argmax(1) == yb).sum().item()
            seen += len(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        history.append((total / seen, correct / seen, evaluate(model, *val) if val else None))
    return history


def split(x, y, val_fraction, seed=42):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(x) * val_fraction))
    tr, va = order[n_val:], order[:n_val]
    return (x[tr], y[tr]), (x[va], y[va])


def mlp_sweep():
    x, y, xt, yt = load_mnist()
    (xtr, ytr), (xva, yva) = split(x, y, 0.2)
    hidden = [256, 256, 128, 128]
    best = None
    for lr in [0.001, 0.01, 0.1]:
        torch.manual_seed(42)
        m = mlp(hidden, True)
        h = fit(m, torch.optim.Adam(m.parameters(), lr=lr), xtr, ytr, 5, 100, (xva, yva))
        acc = max(e[2][0] for e in h)
        if best is None or acc > best[0]:
            best = (acc, lr)
    torch.manual_seed(42)
    m = mlp(hidden, True)
    fit(m, torch.optim.Adam(m.parameters(), lr=best[1]), x, y, 5, 100)
    return evaluate(m, xt, yt)


def mlp_wide():
    x, y, xt, yt = load_mnist()
    (xtr, ytr), (xva, yva) = split(x, y, 0.1)
    torch.manual_seed(42)
    m = mlp([3136, 1568], False)
    fit(m, torch.optim.SGD(m.parameters(), lr=0.1), xtr, ytr, 1, 32, (xva, yva))
    return evaluate(m, xt, yt)


def transfer224():
    """The coursework's frozen-transfer loop: every epoch, every batch is resized to
    224 px and normalised in the data pipeline and goes through the frozen backbone
    (no_grad, eval mode) again, then the head trains on it; validation every epoch
    through the backbone too, then test. Same sizes as benches/configs/e2e_transfer224.toml."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import ResNet18Features

    x, y, xt, yt = load_mnist()
    # The same subset sizes (the images differ: speed does not depend on them).
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(42))[:300]
    (xtr, ytr), (xva, yva) = split(x[order], y[order], 0.25)
    xte, yte = xt[:100], yt[:100]
    torch.manual_seed(42)
    backbone = ResNet18Features().eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    head = nn.Linear(512, 10)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(xb):
        # [-1, 1] back to [0, 1], gray to RGB, resize, ImageNet normalisation.
        img = ((xb.view(-1, 1, 28, 28) + 1) / 2).expand(-1, 3, -1, -1)
        img = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return backbone((img - mean) / std)

    def accuracy(xs, ys):
        correct = 0
        for s in range(0, len(xs), 32):
            with torch.no_grad():
                correct += (head(features(xs[s : s + 32])).argmax(1) == ys[s : s + 32]).sum().item()
        return correct / len(xs)

    g = torch.Generator().manual_seed(42)
    for _ in range(5):
        for xb, yb in DataLoader(TensorDataset(xtr, ytr), batch_size=64, shuffle=True, generator=g):
            loss = F.cross_entropy(head(features(xb)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        accuracy(xva, yva)
    return accuracy(xte, yte)


# name -> (function, training images it processes: for samples/s, same as digitlab's side)
E2E = {
    "e2e_mlp_sweep": (mlp_sweep, 3 * 5 * 48_000 + 5 * 60_000),
    "e2e_mlp_wide": (mlp_wide, 54_000),
    "e2e_transfer224": (transfer224, 5 * 225),
}
