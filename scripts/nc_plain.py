#!/usr/bin/env python3
"""A plain Neural Cleanse in PyTorch, the peer side of scripts/bench_scan.sh (not a test).

Wang et al., S&P 2019, as the toolkits run it: for every class in turn, optimise a mask and a
pattern (x' = (1 - m) x + m p in [0, 1] pixel space, then the model's normalisation) on clean
inputs of the other classes, loss CE(f(x'), t) + lambda |m|_1; Adam lr 0.1, betas (0.5, 0.9),
batch 32, lambda 1e-3 raised 1.5x after 5 steps at >= 99% batch attack success and lowered
1.5^1.5x after 5 steps below; the smallest mask L1 seen at >= 99% is the class's size; the
anomaly index is |min - median| / (1.4826 MAD), flagged above 2. The model is the same ONNX file
fineprune reads, run through onnx2torch.

    .venv/bin/python scripts/nc_plain.py MODEL.onnx --task mnist|gtsrb --clean-fraction 0.05 \
        [--steps 300] [--data-root ../shared/data] [--json OUT.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnx2torch
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import torch_models as tm  # noqa: E402  (the same data loaders as the model makers)


def sidecar(path):
    with open(path[:-5] + ".toml") as f:
        side = dict(line.split(" = ", 1) for line in f.read().splitlines() if " = " in line)
    mean = np.array(eval(side["mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.array(eval(side["std"]), np.float32).reshape(1, -1, 1, 1)
    return torch.from_numpy(mean), torch.from_numpy(std)


def neural_cleanse(model, x, y, target, mean, std, steps, batch, rng):
    pool = np.flatnonzero(y != target)
    _, c, h, w = x.shape
    a = torch.full((1, 1, h, w), -2.0, requires_grad=True)
    b = torch.zeros((1, c, h, w), requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=0.1, betas=(0.5, 0.9))
    lam, up, down, best = 1e-3, 0, 0, None
    labels = torch.full((batch,), target, dtype=torch.long)
    for _ in range(steps):
        xb = torch.from_numpy(x[rng.choice(pool, batch)])
        m, p = torch.sigmoid(a), torch.sigmoid(b)
        logits = model(((1 - m) * xb + m * p - mean) / std)
        size = m.sum()
        loss = F.cross_entropy(logits, labels) + lam * size
        opt.zero_grad()
        loss.backward()
        opt.step()
        asr = (logits.argmax(1) == target).float().mean().item()
        if asr >= 0.99:
            best = size.item() if best is None else min(best, size.item())
            up, down = up + 1, 0
        else:
            up, down = 0, down + 1
        if up >= 5:
            lam, up = lam * 1.5, 0
        elif down >= 5:
            lam, down = lam / 1.5 ** 1.5, 0
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--task", choices=["mnist", "gtsrb"], required=True)
    p.add_argument("--clean-fraction", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--data-root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    x, y, _, _ = tm.mnist(a.data_root) if a.task == "mnist" else tm.gtsrb(a.data_root)
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(y))[: max(1, round(a.clean_fraction * len(y)))]
    x, y = x[keep], y[keep]
    mean, std = sidecar(a.model)
    model = onnx2torch.convert(a.model).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    with torch.no_grad():
        preds = torch.cat([model((torch.from_numpy(x[i:i + 512]) - mean) / std).argmax(1) for i in range(0, len(y), 512)]).numpy()
    x, y = x[preds == y], y[preds == y]
    classes = int(model((torch.from_numpy(x[:1]) - mean) / std).shape[1])
    start = time.time()
    sizes = []
    for t in range(classes):
        sizes.append(neural_cleanse(model, x, y, t, mean, std, a.steps, a.batch, rng))
        print(f"class {t}: mask L1 {sizes[-1]} ({time.time() - start:.0f}s)", file=sys.stderr, flush=True)
    seconds = time.time() - start
    v = np.array([s for s in sizes if s is not None])
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    index = abs(med - v.min()) / mad if mad > 0 else None
    out = {"model": a.model, "classes": classes, "samples": int(len(y)), "steps": a.steps, "batch": a.batch,
           "sizes": sizes, "anomaly_index": index, "flagged": sizes.index(float(v.min())) if index and index > 2 else None,
           "seconds": seconds, "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
