#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures that crates/models/tests/parity.rs checks.

Requirements (all from PyPI):
    pip install torch torchvision safetensors numpy
    # optional, for the two real-weight fixtures:
    pip install --no-deps efficientnet_lite_pytorch==0.1.0 ccexam==1.0.0

Run from anywhere:
    python3 crates/models/tests/parity/make_fixtures.py [--weights DIR]

Outputs (next to this script):
    keys.txt                torchvision state-dict keys and shapes (num_batches_tracked
                            dropped) of resnet18/34/50/101, vgg11/13/16/19(_bn) and alexnet,
                            all with 1000 classes: one `model key d0xd1x...` per line.
    synthetic.safetensors   inputs' shapes are fixed below; for each of resnet18,
                            resnet50, vgg11, vgg16, alexnet: `<model>.features` (the input of the
                            final linear layer) and `<model>.logits`, computed in float64.
    real.safetensors        (only with --weights DIR or $DIGITLAB_WEIGHTS holding
                            efficientnet-lite0.safetensors and ccexam-svhn-cnn.safetensors)
                            `efficientnet_lite0.features/logits` and `ccexam.features/logits`
                            of the real pretrained networks on the formula input.

The synthetic weights: every parameter and buffer (except num_batches_tracked) is
filled from its name and its row-major element index i by

    h     = sum of the UTF-8 bytes of the tensor name
    j     = i + 1
    k     = (j * j * 40503 + j * 2654435761 + h * 12345) mod 2**32   (exact integers)
    s     = sin(2 * pi * k / 2**32)            (float64, evaluated in this order)
    value = 1 + 0.1 * |s|                  if the name ends with running_var
            0.1 * s                        if it ends with running_mean or bias
            0.5 + 0.1 * s                  if it ends with weight and has 1 dimension (BN)
            s * 2 / sqrt(fan_in)           if it ends with weight, >= 2 dimensions
                                           (fan_in = product of all dims but the first)

rounded to float32. The quadratic term makes s look random (a phase linear in i
makes sin periodic, and the convolutions then cancel to nothing); the 2/sqrt(fan_in)
(He) scale and BN weights near 0.5 keep activations O(1) in VGG (no BN) and in the
ResNets (whose residual streams grow with unit BN weights). The input is x[i] = s(i)
with h = hash("input") over the row-major NCHW index, rounded to float32. The
reference runs in eval mode in float64 on the float32-rounded values, so the
fixtures carry no float32 error of their own. The Rust test recomputes the same
numbers.
"""
import argparse
import math
import os

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))

SYNTHETIC = {
    # name: (constructor, input shape, head module path)
    "resnet18": (torchvision.models.resnet18, (2, 3, 64, 64), "fc"),
    "resnet50": (torchvision.models.resnet50, (2, 3, 64, 64), "fc"),
    "vgg11": (torchvision.models.vgg11, (1, 3, 32, 32), "classifier.6"),
    "vgg16": (torchvision.models.vgg16, (1, 3, 32, 32), "classifier.6"),
    # 224x200: the height reaches the 6x6 pool as 6 (identity), the width as 5
    # (overlapping adaptive bins).
    "alexnet": (torchvision.models.alexnet, (1, 3, 224, 200), "classifier.6"),
}

KEY_MODELS = [
    "resnet18", "resnet34", "resnet50", "resnet101",
    "vgg11", "vgg13", "vgg16", "vgg19",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "alexnet",
]


def name_hash(name: str) -> int:
    return sum(name.encode("utf-8"))


def hashed_sin(n: int, h: int) -> np.ndarray:
    """s(i) for i < n, float64 (uint64 products wrap mod 2**64, which keeps mod 2**32 exact)."""
    out = np.empty(n, dtype=np.float64)
    chunk = 1 << 23
    for start in range(0, n, chunk):
        j = np.arange(start + 1, min(n, start + chunk) + 1, dtype=np.uint64)
        k = (j * j * np.uint64(40503) + j * np.uint64(2654435761) + np.uint64(h * 12345)) & np.uint64(0xFFFFFFFF)
        out[start:start + len(j)] = np.sin(2 * np.pi * k.astype(np.float64) / 4294967296.0)
    return out


def values(name: str, shape, s: np.ndarray, modern: bool = False) -> np.ndarray:
    """The formula's values from the sequence s (see the docstring; `modern` adds the
    rules of make_modern_fixtures.py: 1-d `gamma` like a norm weight, 0.5 * s for the rest)."""
    if name.endswith("running_var"):
        return 1 + 0.1 * np.abs(s)
    if name.endswith("running_mean") or name.endswith("bias"):
        return 0.1 * s
    if (name.endswith("weight") or (modern and name.endswith("gamma"))) and len(shape) == 1:
        return 0.5 + 0.1 * s
    if name.endswith("weight"):
        fan_in = int(np.prod(shape[1:]))
        return s * 2 / math.sqrt(fan_in)
    if modern:
        return 0.5 * s
    raise ValueError(f"no formula for {name}")


def formula(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    v = values(name, shape, hashed_sin(n, name_hash(name)))
    return torch.from_numpy(v.astype(np.float32)).reshape(shape)


def formula_input(shape) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(hashed_sin(n, name_hash("input")).astype(np.float32)).reshape(shape)


def state_keys(model):
    return [[k, list(v.shape)] for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]


def run_with_head_input(model, head_path, x):
    """Eval-mode float64 forward; returns (input of the head module, logits)."""
    head = model.get_submodule(head_path)
    seen = {}
    hook = head.register_forward_hook(lambda m, inp, out: seen.__setitem__("features", inp[0].detach()))
    with torch.no_grad():
        logits = model(x)
    hook.remove()
    return seen["features"], logits


def synthetic(out):
    tensors = {}
    for name, (ctor, shape, head) in SYNTHETIC.items():
        model = ctor(num_classes=1000).eval()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if k.endswith("num_batches_tracked"):
                    continue
                v.copy_(formula(k, tuple(v.shape)))
        model = model.double()
        x = formula_input(shape).double()
        feats, logits = run_with_head_input(model, head, x)
        tensors[f"{name}.features"] = feats.float().contiguous()
        tensors[f"{name}.logits"] = logits.float().contiguous()
        print(f"{name}: features {tuple(feats.shape)} max|.| {feats.abs().max():.4g}, "
              f"logits {tuple(logits.shape)} max|.| {logits.abs().max():.4g}")
    save_file(tensors, os.path.join(out, "synthetic.safetensors"))


def keys(out):
    ctors = {n: getattr(torchvision.models, n) for n in KEY_MODELS}
    with open(os.path.join(out, "keys.txt"), "w") as f:
        for n, c in ctors.items():
            for k, shape in state_keys(c(num_classes=1000)):
                f.write(f"{n} {k} {'x'.join(str(d) for d in shape)}\n")


def real(out, weights):
    from safetensors.torch import load_file

    tensors = {}
    # EfficientNet-Lite0 as the reference package builds it (static SAME padding for 224 px).
    from efficientnet_lite_pytorch import EfficientNet

    sd = load_file(os.path.join(weights, "efficientnet-lite0.safetensors"))
    model = EfficientNet.from_name("efficientnet-lite0")
    ret = model.load_state_dict(sd, strict=False)
    assert not ret.unexpected_keys, ret.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in ret.missing_keys), ret.missing_keys
    model = model.eval().double()
    x = formula_input((1, 3, 224, 224)).double()
    feats, logits = run_with_head_input(model, "_fc", x)
    tensors["efficientnet_lite0.features"] = feats.float().contiguous()
    tensors["efficientnet_lite0.logits"] = logits.float().contiguous()
    print(f"efficientnet_lite0: logits max|.| {logits.abs().max():.4g}, top-1 {int(logits.argmax())}")

    from ccexam.models import SVHNNet

    sd = load_file(os.path.join(weights, "ccexam-svhn-cnn.safetensors"))
    model = SVHNNet(input_size=32)
    ret = model.load_state_dict(sd, strict=False)
    assert not ret.unexpected_keys, ret.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in ret.missing_keys), ret.missing_keys
    model = model.eval().double()
    x = formula_input((2, 3, 32, 32)).double()
    feats, logits = run_with_head_input(model, "classifier.4", x)
    tensors["ccexam.features"] = feats.float().contiguous()
    tensors["ccexam.logits"] = logits.float().contiguous()
    print(f"ccexam: logits max|.| {logits.abs().max():.4g}")
    save_file(tensors, os.path.join(out, "real.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=os.environ.get("DIGITLAB_WEIGHTS"))
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    torch.manual_seed(0)
    keys(args.out)
    synthetic(args.out)
    if args.weights:
        real(args.out, args.weights)
    else:
        print("no --weights / DIGITLAB_WEIGHTS: real.safetensors not regenerated")


if __name__ == "__main__":
    main()
