"""Loads a digitlab-written `model.safetensors` into the matching PyTorch model
with `strict=True` and checks digitlab's logits on fixed inputs to 1e-4.

Usage: torchvision_load.py MODEL_DIR ARCH [NUM_CLASSES]

MODEL_DIR holds `model.safetensors` (written by `digitlab transfer`) and
`inputs.safetensors` / `logits.safetensors` (tensors `inputs` [N, C, H, W],
preprocessed, and `logits` [N, K], written by digitlab's test
`crates/finetune/tests/export.rs`). ARCH is a torchvision name (`resnet18`,
`resnet50`, `vgg11`, `vgg16_bn`, ...) or `small_cnn` (the ccexam SVHN CNN, built
here as the `nn.Sequential`s its tensor names come from).

Exit status: 0 when the file loads strictly and the logits agree, 1 when not,
77 (skipped, with the reason on stdout) when torch, torchvision or safetensors is
not installed.
"""
import sys

SKIP = 77

try:
    import torch
    from torch import nn
    from safetensors.torch import load_file
except ImportError as e:  # pragma: no cover - depends on the environment
    print(f"skipped: {e} (pip install torch torchvision safetensors)")
    sys.exit(SKIP)


def small_cnn(num_classes, side=32):
    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    class SVHNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128))
            self.classifier = nn.Sequential(
                nn.Dropout(0.3),
                nn.Linear(128 * (side // 8) ** 2, 256),
                nn.ReLU(),
                nn.Dropout(0.3),
                nn.Linear(256, num_classes),
            )

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return SVHNNet()


def build(arch, num_classes, side):
    if arch == "small_cnn":
        return small_cnn(num_classes, side)
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover
        print(f"skipped: {e} (pip install torchvision)")
        sys.exit(SKIP)
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    folder, arch = sys.argv[1], sys.argv[2]
    num_classes = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    state = load_file(f"{folder}/model.safetensors")
    inputs = load_file(f"{folder}/inputs.safetensors")["inputs"]
    want = load_file(f"{folder}/logits.safetensors")["logits"]
    model = build(arch, num_classes, inputs.shape[-1])
    # strict=True: every tensor of the torch model is in the file and nothing else.
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        got = model(inputs.float())
    err = (got - want).abs().max().item()
    print(f"{arch}: {len(state)} tensors loaded strictly; max |logit difference| {err:.3g}")
    if got.shape != want.shape or not err <= 1e-4:
        print(f"FAIL: logits differ (shape {tuple(got.shape)} vs {tuple(want.shape)}, max diff {err})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
