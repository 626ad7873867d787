#!/usr/bin/env python3
"""Which torchvision architectures fineprune imports, and whether they predict as PyTorch does.

Not part of the test suite (CI has no PyTorch). For each architecture: random weights (seeded,
BatchNorm statistics perturbed so normalisation is not the identity), 10 classes, exported with
PyTorch's default ONNX settings (and, with --torchscript, the older TorchScript exporter). Then
fineprune imports it and evaluates 32 inputs labelled with PyTorch's own predictions
(agreement = accuracy), and exports it back to ONNX, whose logits onnxruntime compares with
PyTorch's. One JSON line per model on stdout (and appended to --jsonl).

    .venv/bin/pip install torch torchvision onnx onnxscript onnxruntime numpy
    .venv/bin/python scripts/torchvision_zoo.py OUT_DIR [--fineprune target/release/fineprune]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
import torchvision.models as tvm
from torchvision.models.vision_transformer import VisionTransformer

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
SIZE = 64  # small inputs keep 11 models to minutes on two cores
# VGG's adaptive pooling to 7x7 would upsample a 2x2 map at 64x64 (exported as gathers);
# at its own 224x224 it is the identity.
SIZES = {"vgg11_bn": 224}


def models():
    yield "resnet18", lambda: tvm.resnet18(num_classes=10)
    yield "vgg11_bn", lambda: tvm.vgg11_bn(num_classes=10)
    yield "densenet121", lambda: tvm.densenet121(num_classes=10)
    yield "squeezenet1_1", lambda: tvm.squeezenet1_1(num_classes=10)
    yield "mobilenet_v2", lambda: tvm.mobilenet_v2(num_classes=10)
    yield "mobilenet_v3_small", lambda: tvm.mobilenet_v3_small(num_classes=10)
    yield "efficientnet_b0", lambda: tvm.efficientnet_b0(num_classes=10)
    yield "regnet_y_400mf", lambda: tvm.regnet_y_400mf(num_classes=10)
    yield "shufflenet_v2_x0_5", lambda: tvm.shufflenet_v2_x0_5(num_classes=10)
    yield "convnext_tiny", lambda: tvm.convnext_tiny(num_classes=10)
    yield "vit_small", lambda: VisionTransformer(image_size=SIZE, patch_size=16, num_layers=2, num_heads=4,
                                                 hidden_dim=64, mlp_dim=128, num_classes=10)


def perturb_batchnorm(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def perturb_constant_params(model, gen):
    """Adds noise to every parameter that starts constant. torchvision's ViT starts with a zero
    head, zero class token and biases, and unit layer norms: its logits would be all zero and
    agree with anything."""
    for p in model.parameters():
        if p.numel() > 1 and float(p.detach().std()) == 0.0:
            p.data.add_(torch.randn(p.shape, generator=gen) * 0.2)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--fineprune", default="target/release/fineprune")
    ap.add_argument("--torchscript", action="store_true", help="also export with dynamo=False")
    ap.add_argument("--only", nargs="*", help="architecture names to run")
    ap.add_argument("--jsonl", help="append each result line here")
    ap.add_argument("--export-only", action="store_true", help="write the ONNX files and stop")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    stamp = {"date": datetime.date.today().isoformat(), "commit": commit, "machine": f"{platform.machine()} {os.cpu_count()} cores",
             "torch": torch.__version__}
    exporters = ["dynamo"] + (["torchscript"] if a.torchscript else [])

    def emit(row):
        print(json.dumps(row), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")

    for name, make in models():
        if a.only and name not in a.only:
            continue
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = make().eval()
        with torch.no_grad():
            perturb_batchnorm(model, gen)
            if name.startswith("vit"):
                perturb_constant_params(model, gen)
            size = SIZES.get(name, SIZE)
            x = torch.rand(32, 3, size, size, generator=gen)
            logits = model(x).numpy()
        y = logits.argmax(1)
        npz = os.path.join(a.out, f"{name}.npz")
        np.savez(npz, x=x.numpy(), y=y, x_test=x.numpy(), y_test=y)
        for exporter in exporters:
            row = {"model": name, "exporter": exporter, **stamp}
            path = os.path.join(a.out, f"{name}-{exporter}.onnx")
            t0 = time.time()
            try:
                if not os.path.exists(path):  # exports are slow; delete OUT_DIR to redo them
                    torch.onnx.export(model, (x[:2],), path, dynamo=(exporter == "dynamo"), input_names=["input"], output_names=["logits"],
                                      dynamic_axes=None if exporter == "dynamo" else {"input": {0: "batch"}, "logits": {0: "batch"}},
                                      dynamic_shapes=({0: torch.export.Dim("batch")},) if exporter == "dynamo" else None)
            except Exception as e:  # noqa: BLE001 - the exporter's own failure is a result too
                row.update(imported=False, error=f"PyTorch could not export: {str(e).splitlines()[0][:300]}")
                emit(row)
                continue
            ops = sorted({n.op_type for n in __import__("onnx").load(path).graph.node})
            row["onnx_ops"] = ops
            if a.export_only:
                continue
            code, out, err = run([a.fineprune, "eval", "--model", path, "--data", f"npz:{npz}", "--layout", "nchw", "--json"])
            row["seconds_import_eval"] = round(time.time() - t0, 2)
            if code != 0:
                row.update(imported=False, error=err.strip().splitlines()[-1][:600] if err.strip() else f"exit {code}")
                emit(row)
                continue
            res = json.loads(out)
            row.update(imported=True, agreement=res.get("clean_accuracy", res.get("accuracy")))
            back = os.path.join(a.out, f"{name}-{exporter}-fineprune.onnx")
            code, _, err = run([a.fineprune, "convert", "--model", path, "--out", back])
            if code != 0:
                row.update(exported=False, export_error=err.strip().splitlines()[-1][:600] if err.strip() else f"exit {code}")
            else:
                sess = ort.InferenceSession(back, providers=["CPUExecutionProvider"])
                got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
                row.update(exported=True, export_max_abs_diff=float(np.abs(got - logits).max()),
                           export_agreement=float((got.argmax(1) == y).mean()))
            emit(row)


if __name__ == "__main__":
    sys.exit(main())
