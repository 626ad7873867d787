#!/usr/bin/env python3
"""Builds the ONNX test fixtures that must come from PyTorch's own exporter (committed; CI does
not run this): tests/fixtures/onnx/mobile_torch.onnx, a tiny network with the blocks of the
mobile architectures (ReLU6, depthwise convolution, HardSwish, squeeze-and-excitation gates
with HardSigmoid and Sigmoid, SiLU, a channel split and ShuffleNet's channel shuffle, adaptive
average pooling), gelu_torch.onnx (GELU), convnext_torch.onnx and convnext_dynamo.onnx (a
ConvNeXt block: layer norms channels-last and on flat features, linear layers on the channel
axis, a layer scale; by the TorchScript and the default exporter)
and vit_torch.onnx (torchvision's VisionTransformer, two layers, two heads: patch embedding,
class token, position embedding, multi-head attention, GELU MLPs, every parameter perturbed
from its constant initialisation);
random weights and perturbed BatchNorm statistics, exported with
PyTorch's default (torch.export-based) exporter unless named otherwise. The reference outputs come from onnxruntime
on a fixed input, stored beside it as little-endian f32 (`NAME.in.f32`, `NAME.out.f32`).

    .venv/bin/pip install torch onnx onnxscript onnxruntime numpy
    .venv/bin/python scripts/make_torch_fixtures.py [NAME ...]
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "onnx")


class SqueezeExcite(nn.Module):
    def __init__(self, c, gate):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, c // 2, 1)
        self.expand = nn.Conv2d(c // 2, c, 1)
        self.gate = gate

    def forward(self, x):
        return x * self.gate(self.expand(torch.relu(self.reduce(self.pool(x)))))


class Mobile(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.se1 = SqueezeExcite(8, nn.Hardsigmoid())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.se2 = SqueezeExcite(16, nn.Sigmoid())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.last = nn.Sequential(nn.Conv2d(16, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(24, classes))

    def forward(self, x):
        x = self.se1(self.dw(self.stem(x)))
        x = self.se2(self.expand(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.last(x))


class GeluNet(nn.Module):
    """GELU apart: exported as ONNX's Gelu (opset 20), which tract cannot read back."""

    def __init__(self, classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x):
        return self.body(x)


class ChannelsLastNorm(nn.Module):
    """torchvision's LayerNorm2d: layer norm over the channels, channels-last."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNextNet(nn.Module):
    """One ConvNeXt block as torchvision writes it, between a patchify stem and a head whose
    layer norm acts on the flat features."""

    def __init__(self, classes=5, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 4, 4), ChannelsLastNorm(c))
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.up = nn.Linear(c, 4 * c)
        self.down = nn.Linear(4 * c, c)
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(c), nn.Linear(c, classes))

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.down(nn.functional.gelu(self.up(y))).permute(0, 3, 1, 2)
        return self.head(x + self.layer_scale * y)


def tiny_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    model = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)
    with torch.no_grad():
        # Zero head, class token and biases, unit layer norms: logits would not depend on the input.
        for p in model.parameters():
            if p.numel() > 1 and float(p.std()) == 0.0:
                p.add_(torch.randn(p.shape) * 0.2)
    return model


def export(name, model, dynamo=True):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.rand(2, 3, 16, 16)
    path = os.path.join(OUT, f"{name}.onnx")
    if dynamo:
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"], external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(y - model(x).numpy()).max() < 1e-4, "onnxruntime disagrees with PyTorch"
    x.numpy().astype("<f4").tofile(os.path.join(OUT, f"{name}.in.f32"))
    y.astype("<f4").tofile(os.path.join(OUT, f"{name}.out.f32"))
    print("wrote", path, sorted({n.op_type for n in __import__("onnx").load(path).graph.node}))


# name -> (seed, model, PyTorch's default exporter?). The default exporter writes ConvNeXt's
# final pooling as an as_strided gather at indices computed from the batch size; the
# TorchScript one as a plain pooling. Both are fixtures.
FIXTURES = {
    "mobile_torch": (0, Mobile, True),
    "gelu_torch": (1, GeluNet, True),
    "convnext_torch": (2, ConvNextNet, False),
    "convnext_dynamo": (2, ConvNextNet, True),
    "vit_torch": (3, tiny_vit, True),
}


def main():
    """Writes the fixtures named on the command line, or all of them."""
    for name in sys.argv[1:] or FIXTURES:
        seed, make, dynamo = FIXTURES[name]
        torch.manual_seed(seed)
        export(name, make().eval(), dynamo=dynamo)


if __name__ == "__main__":
    main()
