#!/usr/bin/env python3
"""PyTorch side of scripts/gpu-check.sh: the `gpu_*` workloads of digitlab-bench
(benches/gpu.rs) on the same GPU, in f32 or bf16, one JSON line per run.

    python3 scripts/gpu_reference.py --list
    python3 scripts/gpu_reference.py gpu_mlp_sgd_b100 [--device cuda] [--dtype f32|bf16]
        [--seconds 3] [--warmup 3] [--min-steps 3] [--scale 1]

Same work as digitlab's twin: same shapes, optimizers, synthetic data (the
splitmix64 values of benches/reference/bench.py, whose model definitions are
reused), and the loss (or one feature value) read back to the host every step, so
wall time measures finished GPU work. bf16 is mixed precision as in digitlab: f32
weights and optimizer, the forward under torch.autocast(bfloat16), the loss in f32.
`--device cpu --scale 0.01` runs a small version anywhere (a smoke test).
"""
import argparse
import contextlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# bench.py sits beside this script in a gpu-pack folder, or in benches/reference/.
for d in (HERE, os.path.join(HERE, "..", "benches", "reference")):
    if os.path.isfile(os.path.join(d, "bench.py")):
        sys.path.insert(0, d)
        break

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench import LeNet5, ResNet18Features, Vgg16Features, mlp, synthetic  # noqa: E402

SVHN_TRAIN = 73257
WORKLOADS = [
    ("gpu_mlp_sgd_b100", 100),
    ("gpu_mlp_sgd_b1024", 1024),
    ("gpu_lenet5_adam_b256", 256),
    ("gpu_resnet18_feat224_b256", 256),
    ("gpu_vgg16_feat224_b256", 256),
    ("gpu_transfer_svhn", SVHN_TRAIN),
]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def autocast(dev, dtype):
    if dtype == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def images(b, c, side, dev):
    return torch.from_numpy(synthetic(b * c * side * side, 1).reshape(b, c, side, side)).to(dev)


def labels(b, dev):
    return (torch.arange(b, dtype=torch.int64) % 10).to(dev)


def train_step(model, x, y, opt, dev, dtype):
    def step():
        with autocast(dev, dtype):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def features_step(model, side, batch, dev, dtype):
    model.eval()
    x = images(batch, 3, side, dev)

    def step():
        with torch.inference_mode(), autocast(dev, dtype):
            f = model(x)
            f[0, 0].float().item()

    return step


def transfer_step(n, dev, dtype):
    """u8 images -> ImageNet normalisation -> frozen ResNet-18 (batch 256) -> a new
    linear head, one epoch of Adam at batch 256 (as digitlab's extract_features +
    train_head)."""
    pixels = torch.from_numpy(((synthetic(n * 3 * 32 * 32, 4) + 1.0) * 127.5).astype(np.uint8).reshape(n, 3, 32, 32))
    ys = torch.from_numpy(np.arange(n) % 10).long()
    backbone = ResNet18Features().to(dev).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    state = {"epoch": 0}

    def step():
        parts = []
        with torch.inference_mode(), autocast(dev, dtype):
            for s in range(0, n, 256):
                x = pixels[s : s + 256].to(dev).float().div_(255.0).sub_(mean).div_(std)
                parts.append(backbone(x).float())
        feats = torch.cat(parts).clone()
        head = nn.Linear(512, 10).to(dev)
        opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(state["epoch"])
        order = torch.randperm(n, generator=g).to(dev)
        y_dev = ys.to(dev)
        for s in range(0, n, 256):
            ids = order[s : s + 256]
            loss = F.cross_entropy(head(feats[ids]), y_dev[ids])
            loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        state["epoch"] += 1

    return step


def prepare(name, dev, dtype, scale):
    torch.manual_seed(0)
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.01)  # noqa: E731
    adam = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)  # noqa: E731
    if name in ("gpu_mlp_sgd_b100", "gpu_mlp_sgd_b1024"):
        batch = int(name.rsplit("_b", 1)[1])
        m = mlp([256, 256, 128, 128]).to(dev)
        return train_step(m, images(batch, 1, 28, dev), labels(batch, dev), sgd(m), dev, dtype), batch
    if name == "gpu_lenet5_adam_b256":
        m = LeNet5(3).to(dev)
        return train_step(m, images(256, 3, 32, dev), labels(256, dev), adam(m), dev, dtype), 256
    if name == "gpu_resnet18_feat224_b256":
        return features_step(ResNet18Features().to(dev), 224, 256, dev, dtype), 256
    if name == "gpu_vgg16_feat224_b256":
        return features_step(Vgg16Features().to(dev), 224, 256, dev, dtype), 256
    if name == "gpu_transfer_svhn":
        n = max(10, round(SVHN_TRAIN * min(max(scale, 0.0), 1.0)))
        return transfer_step(n, dev, dtype), n
    raise SystemExit(f"unknown workload `{name}` (see --list)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", nargs="?")
    p.add_argument("--list", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0)
    a = p.parse_args()
    if a.list:
        for name, n in WORKLOADS:
            print(f"{name}\t{n}")
        return 0
    if not a.workload:
        p.error("name a workload or pass --list")
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this PyTorch sees no CUDA GPU")
    # f32 means f32: no TF32 shortcuts in matmuls or convolutions (digitlab uses none).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    step, per_step = prepare(a.workload, dev, a.dtype, a.scale)
    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    steps = 0
    while steps < max(a.min_steps, 1) or time.perf_counter() - t0 < a.seconds:
        step()
        steps += 1
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "side": "pytorch",
                "workload": a.workload,
                "device": a.device,
                "dtype": a.dtype,
                "samples_per_second": steps * per_step / max(seconds, 1e-12),
                "steps": steps,
                "seconds": seconds,
                "samples_per_step": per_step,
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
