#!/usr/bin/env python3
"""PyTorch reference side of `cargo xtask bench`.

Runs one workload in this process and prints one JSON line, exactly like
`digitlab-bench` does for digitlab (benches/bin/digitlab_bench.rs):

    python3 benches/reference/bench.py --list
    python3 benches/reference/bench.py <workload> [--seconds 2] [--warmup 3] [--min-steps 3] [--threads 2]

Every workload does the same work as its digitlab twin in benches/workloads.rs:
same shapes, optimizer and hyperparameters, the same synthetic data (the same
splitmix64 values), the same warm-up and timing protocol (warm-up steps, then timed
steps until at least `--seconds` passed and `--min-steps` ran), and the loss read
back to the host every training step (as digitlab's trainer does).

Needs only `torch` and `numpy` (pip install torch numpy); the models are defined
here (torchvision's ResNet-18 / VGG-16 layouts) so torchvision is not needed.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WORKLOADS = [
    ("mlp_sgd_b1", 1),
    ("mlp_sgd_b32", 32),
    ("mlp_sgd_b100", 100),
    ("mlp_sgd_b256", 256),
    ("mlp_adam_b1", 1),
    ("mlp_adam_b32", 32),
    ("mlp_adam_b100", 100),
    ("mlp_adam_b256", 256),
    ("mlp_eval_b1000", 1000),
    ("wide_mlp_sgd_b32", 32),
    ("logreg_adam_full12000", 12000),
    ("lenet5_adam_b64", 64),
    ("efficientnet_finetune64_b32", 32),
    ("resnet18_feat32_b64", 64),
    ("resnet18_feat224_b32", 32),
    ("vgg16_feat32_b64", 64),
    ("vgg16_feat224_b8", 8),
    ("head_adam_b64", 64),
    ("data_pipeline_b100", 60000),
    # End to end on real MNIST (benches/reference/e2e.py): one run, no warm-up.
    ("e2e_mlp_sweep", 1020000),
    ("e2e_mlp_wide", 54000),
    ("e2e_transfer224", 1125),
]


def synthetic(n, seed):
    """Values in [-1, 1): splitmix64 finaliser of i + 1 + seed * 0x9E3779B97F4A7C15, top 24 bits."""
    with np.errstate(over="ignore"):
        base = np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
        z = np.arange(1, n + 1, dtype=np.uint64) + base
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24) * np.float32(2.0) - np.float32(1.0)


def images(b, c, h, w):
    return torch.from_numpy(synthetic(b * c * h * w, 1).reshape(b, c, h, w))


def labels(b, classes):
    return torch.arange(b, dtype=torch.int64) % classes


def mlp(hidden, inputs=784, classes=10):
    dims = [inputs] + list(hidden) + [classes]
    layers = [nn.Flatten()]
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class LeNet5(nn.Module):
    """digitlab's LeNet-5 (crates/models/src/cnn.rs): ReLU + max pooling."""

    def __init__(self, channels=3, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s)


class ResNet18Features(nn.Module):
    """torchvision resnet18 up to the global average pool (512-d)."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for stage in range(4):
            cout = 64 << stage
            for i in range(2):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return torch.flatten(F.adaptive_avg_pool2d(self.blocks(x), 1), 1)


class Vgg16Features(nn.Module):
    """torchvision vgg16 up to the ReLU after classifier.3 (4096-d)."""

    def __init__(self, channels=3):
        super().__init__()
        layers, cin = [], channels
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(512 * 7 * 7, 4096)
        self.fc2 = nn.Linear(4096, 4096)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 7)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.relu(self.fc2(x))


def same_pad(x, k, s):
    """TensorFlow "SAME" zero padding of x for kernel k, stride s (odd element after)."""
    pads = []
    for n in (x.shape[3], x.shape[2]):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from each input (no bias)."""

    def __init__(self, cin, cout, k, s, groups=1):
        super().__init__(cin, cout, k, s, bias=False, groups=groups)

    def forward(self, x):
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0]))


def bn_lite(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MbConv(nn.Module):
    """digitlab's MBConv block (crates/models/src/efficientnet.rs), no squeeze-excitation."""

    def __init__(self, k, s, e, cin, cout, drop_connect):
        super().__init__()
        mid = cin * e
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), bn_lite(mid), nn.ReLU6()) if e != 1 else None
        self.dw = nn.Sequential(SameConv(mid, mid, k, s, groups=mid), bn_lite(mid), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), bn_lite(cout))
        self.skip = s == 1 and cin == cout
        self.drop_connect = drop_connect

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        if not self.skip:
            return y
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = (torch.rand(x.shape[0], 1, 1, 1) >= self.drop_connect).to(x.dtype) / keep
            y = y * mask
        return y + x


class EfficientNetLite0(nn.Module):
    """digitlab's EfficientNet-Lite0 (crates/models/src/efficientnet.rs)."""

    STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]

    def __init__(self, channels=3, classes=10):
        super().__init__()
        self.stem = nn.Sequential(SameConv(channels, 32, 3, 2), bn_lite(32), nn.ReLU6())
        blocks = []
        for repeats, k, s, e, cin, cout in self.STAGES:
            for r in range(repeats):
                rate = 0.2 * len(blocks) / 16
                blocks.append(MbConv(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout, rate))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), bn_lite(1280), nn.ReLU6())
        self.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def classifier_step(model, x, y, opt):
    def step():
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def sgd(model, lr):
    return torch.optim.SGD(model.parameters(), lr=lr)


def adam(model, lr):
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)


MLP_HIDDEN = [256, 256, 128, 128]


def features_step(model, side, batch):
    model.eval()
    x = images(batch, 3, side, side)

    def step():
        with torch.inference_mode():
            f = model(x)
            f[0, 0].item()

    return step


def prepare(name):
    torch.manual_seed(0)
    if name.startswith("mlp_") and name != "mlp_eval_b1000":
        _, opt_name, b = name.split("_")
        batch = int(b[1:])
        m = mlp(MLP_HIDDEN)
        opt = sgd(m, 0.01) if opt_name == "sgd" else adam(m, 1e-3)
        return classifier_step(m, images(batch, 1, 28, 28), labels(batch, 10), opt)
    if name == "mlp_eval_b1000":
        m = mlp(MLP_HIDDEN)
        x = images(1000, 1, 28, 28)

        def step():
            with torch.inference_mode():
                m(x).argmax(1).tolist()

        return step
    if name == "wide_mlp_sgd_b32":
        m = mlp([3136, 1568])
        return classifier_step(m, images(32, 1, 28, 28), labels(32, 10), sgd(m, 0.1))
    if name == "logreg_adam_full12000":
        n = 12000
        lin = nn.Linear(784, 1)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        opt = adam(lin, 0.01)
        x = images(n, 1, 28, 28)
        y = labels(n, 2).float()
        coef = 0.01 / (2 * n)

        def step():
            out = lin(torch.flatten(x, 1)).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(out, y) + coef * lin.weight.pow(2).sum()
            loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step
    if name == "lenet5_adam_b64":
        m = LeNet5(3)
        return classifier_step(m, images(64, 3, 32, 32), labels(64, 10), adam(m, 1e-3))
    if name == "efficientnet_finetune64_b32":
        m = EfficientNetLite0(3)
        m.train()
        return classifier_step(m, images(32, 3, 64, 64), labels(32, 10), adam(m, 1e-3))
    if name == "resnet18_feat32_b64":
        return features_step(ResNet18Features(), 32, 64)
    if name == "resnet18_feat224_b32":
        return features_step(ResNet18Features(), 224, 32)
    if name == "vgg16_feat32_b64":
        return features_step(Vgg16Features(), 32, 64)
    if name == "vgg16_feat224_b8":
        return features_step(Vgg16Features(), 224, 8)
    if name == "head_adam_b64":
        rows, dim, batch = 10000, 512, 64
        feats = torch.from_numpy(synthetic(rows * dim, 2).reshape(rows, dim))
        ys = labels(rows, 10)
        head = nn.Linear(dim, 10)
        opt = adam(head, 1e-3)
        order = (torch.arange(rows, dtype=torch.int64) * 7919) % rows
        state = {"pos": 0}

        def step():
            if state["pos"] + batch > rows:
                state["pos"] = 0
            ids = order[state["pos"] : state["pos"] + batch]
            state["pos"] += batch
            x, y = feats[ids], ys[ids]
            loss = F.cross_entropy(head(x), y)
            loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step
    if name == "data_pipeline_b100":
        n = 60000
        pixels = torch.from_numpy(((synthetic(n * 784, 3) + 1.0) * 127.5).astype(np.uint8).reshape(n, 1, 28, 28))
        ys = torch.from_numpy((np.arange(n) % 10).astype(np.uint8))
        state = {"epoch": 0}

        def step():
            # Normalise the whole set once (x / 255 * 2 - 1), then gather shuffled
            # batches of 100: the usual in-memory PyTorch MNIST pipeline.
            x = pixels.float().mul_(2.0 / 255.0).sub_(1.0)
            g = torch.Generator().manual_seed(state["epoch"])
            order = torch.randperm(n, generator=g)
            seen = 0
            for s in range(0, n, 100):
                ids = order[s : s + 100]
                xb, yb = x[ids], ys[ids].long()
                seen += xb.shape[0]
            assert seen == n
            state["epoch"] += 1

        return step
    if name.startswith("e2e_"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import e2e

        run = e2e.E2E[name][0]
        return lambda: run()
    raise SystemExit(f"unknown workload `{name}` (see --list)")


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", nargs="?")
    p.add_argument("--list", action="store_true")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("DIGITLAB_BENCH_THREADS", "2")))
    a = p.parse_args()
    if a.list:
        for name, n in WORKLOADS:
            print(f"{name}\t{n}")
        return
    if not a.workload:
        p.error("name a workload or pass --list")
    torch.set_num_threads(a.threads)
    per_step = dict(WORKLOADS).get(a.workload)
    if per_step is None:
        raise SystemExit(f"unknown workload `{a.workload}` (see --list)")
    step = prepare(a.workload)
    if a.workload.startswith("e2e_"):
        # A whole protocol is one step, timed once, as on digitlab's side.
        a.warmup, a.seconds, a.min_steps = 0, 0.0, 1
    cpu0 = time.process_time()
    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    steps = 0
    while steps < max(a.min_steps, 1) or time.perf_counter() - t0 < a.seconds:
        step()
        steps += 1
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0
    out = {
        "side": "pytorch",
        "workload": a.workload,
        "samples_per_second": steps * per_step / max(seconds, 1e-12),
        "steps": steps,
        "seconds": seconds,
        "samples_per_step": per_step,
        "warmup": a.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_rss_mib": peak_rss_mib(),
        "cpu_seconds": cpu_seconds,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
