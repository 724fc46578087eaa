#!/usr/bin/env python3
"""Writes the timm reference fixture that crates/models/tests/parity_modern.rs checks:
the candle-transformers backbones (crates/models/src/modern.rs) against timm.

Requirements (all from PyPI):
    pip install torch torchvision timm safetensors numpy

Run from anywhere:
    python3 crates/models/tests/parity/make_modern_fixtures.py

Outputs (next to this script):
    modern_keys.txt          timm state-dict keys and shapes (num_batches_tracked and the
                             classifier dropped) of every model below, full size:
                             one `model key d0xd1x...` per line.
    modern.safetensors       for each model, `<model>.features`: timm's
                             `forward_head(forward_features(x), pre_logits=True)` on the
                             formula input of the shape given below, in eval mode, float64.
                             For the DINOv2 models also `<model>.features_stock`: the
                             same for timm's stock model; `<model>.features` is timm built
                             with the activation and LayerNorm epsilon candle-transformers
                             uses (tanh-approximated GELU, eps 1e-5; see docs/modern-backbones.md).

No weights are stored: every parameter and buffer is the formula of make_fixtures.py
(`value` from the tensor's name and its row-major index), with two changes:

    h     = FNV-1a (32 bit) of the UTF-8 name   (not the byte sum: timm names such as
                                                 blocks.1.2.x and blocks.2.1.x would collide)
    value = 0.5 + 0.1 * s   also for 1-dimensional `gamma` (layer scale)
            0.5 * s         for tensors not named *weight, *bias, *running_* or *gamma
                            (cls_token, pos_embed)

The input is s(i) with h = FNV-1a("input"). Random-looking weights and batch-norm
statistics far from (0, 1), full-size models: the fixture is a few kilobytes.
"""
import argparse
import os
import sys

import numpy as np
import timm
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_fixtures import hashed_sin, values  # noqa: E402  (the same sequence s(i) and rules)

# digitlab name: (timm name, timm kwargs for the candle-equivalent model, input shape, classifier prefix)
MODELS = {
    "convnext_tiny": ("convnext_tiny", {}, (2, 3, 64, 64), "head.fc."),
    "vit_small_patch16_224": ("vit_small_patch16_224", {}, (2, 3, 224, 224), "head."),
    "vit_base_patch16_224": ("vit_base_patch16_224", {}, (2, 3, 224, 224), "head."),
    "dinov2_vits14": (
        "vit_small_patch14_dinov2",
        {"act_layer": "gelu_tanh", "norm_layer": lambda d, **kw: torch.nn.LayerNorm(d, eps=1e-5, **kw)},
        (2, 3, 518, 518),
        "head.",
    ),
    "dinov2_vitb14": (
        "vit_base_patch14_dinov2",
        {"act_layer": "gelu_tanh", "norm_layer": lambda d, **kw: torch.nn.LayerNorm(d, eps=1e-5, **kw)},
        (1, 3, 518, 518),
        "head.",
    ),
    "mobilenetv4_conv_small": ("mobilenetv4_conv_small", {}, (2, 3, 64, 64), "classifier."),
    # 64x56: TF "same" padding is asymmetric at stride 2 on even sizes.
    "tf_efficientnet_b0": ("tf_efficientnet_b0", {}, (2, 3, 64, 56), "classifier."),
}


def fnv1a32(name: str) -> int:
    h = 0x811C9DC5
    for b in name.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def formula(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    v = values(name, shape, hashed_sin(n, fnv1a32(name)), modern=True)
    return torch.from_numpy(v.astype(np.float32)).reshape(shape)


def formula_input(shape) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(hashed_sin(n, fnv1a32("input")).astype(np.float32)).reshape(shape)


def build(timm_name, kwargs):
    model = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                v.copy_(formula(k, tuple(v.shape)))
    return model


def pre_logits(model, x):
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--only", nargs="*", help="models to compute (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tensors, lines = {}, []
    for name, (timm_name, kwargs, shape, head) in MODELS.items():
        if args.only and name not in args.only:
            continue
        model = build(timm_name, kwargs)
        for k, v in model.state_dict().items():
            if not k.endswith("num_batches_tracked") and not k.startswith(head):
                lines.append(f"{name} {k} {'x'.join(str(d) for d in v.shape)}\n")
        x = formula_input(shape).double()
        feats = pre_logits(model.double(), x)
        tensors[f"{name}.features"] = feats.float().contiguous()
        msg = f"{name}: features {tuple(feats.shape)} max|.| {feats.abs().max():.4g}"
        if kwargs:
            stock = pre_logits(build(timm_name, {}).double(), x)
            tensors[f"{name}.features_stock"] = stock.float().contiguous()
            gap = (stock - feats).abs().max() / stock.abs().max()
            msg += f"; stock timm differs by {gap:.3e} (relative max)"
        print(msg, flush=True)
    save_file(tensors, os.path.join(args.out, "modern.safetensors"))
    with open(os.path.join(args.out, "modern_keys.txt"), "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
