#!/usr/bin/env python3
"""The PyTorch side of scripts/bench_vs_pytorch.sh (not a test; CI has no PyTorch).

    throughput ARCH... [--batch 64 --steps N]   training and inference images/s on random inputs,
        the same networks as fineprune's built-in architectures (src/model/arch.rs), Adam, the
        thread count in $THREADS; prints one JSON line per network.
    export ARCH OUT.onnx                      a freshly initialised copy of ARCH (sign-resnet: the
        residual GTSRB CNN of scripts/torch_models.py; a torchvision mobile net with BatchNorm
        kept; or vit_tiny, by the default exporter), for fineprune's side of the throughput table.
    input-aware ARCH... [--batch 128 --steps 5]
        the cost of the input-aware dynamic attack (Nguyen & Tran 2020) on this machine: one
        training step of the classifier alone beside one step of the attack's joint phase
        (classifier and pattern generator G, the frozen mask network M, 10% backdoor and 10%
        cross samples, diversity loss) and one step of its mask phase, the generator and mask
        networks as the reference builds them (IA networks/models.py, MNIST or GTSRB widths);
        prints one JSON line per network with seconds per step.
    peer-fineprune MODEL.onnx --data-root D --clean-fraction F [--no-curve]
        fine-pruning the way the Python toolkits do it, producing what `fineprune defend` reports:
        rank the last block's channels by mean clean activation; for each channel re-run the
        *whole* network on the validation set until accuracy drops 4 points; the test curve (clean
        accuracy and attack success of the yellow sticker -> 14 at every pruning level, by
        re-running the whole network per level; --no-curve skips it); fine-tune (5 epochs, Adam
        1e-4, batch 64) on the defender's clean fraction; evaluate the result on the test split.
        Prints the stage times as one JSON line.
    defender-split OUT.npz --data-root D --clean-fraction F
        GTSRB's training split as a defender holds it (a seeded 10% to validate on, a fraction of
        the rest as clean data), for both sides of the loop benchmark.
    peer-loops MODEL.onnx|signnet --data-root D --clean-fraction F [--epochs 5 --fst-epochs 5
        --anp-steps 100 --scan-steps 60] --npz SPLIT.npz
        the defense loops of `fineprune defend` written in PyTorch with the same counts, batch
        sizes and optimisers, each followed by what fineprune does per epoch (clean validation
        accuracy on the whole validation split, the best epoch's weights kept): fine-tuning (Adam
        1e-4, batch 64), FST (head re-initialised, SGD momentum 0.9 + cosine, lr 0.01, batch 128,
        penalty alpha <W, W0>, head rescaled to |W0| after every step) and ANP's mask
        optimisation (batch 128; per step one signed noise step and one mask step on the clean
        and the perturbed loss; every BatchNorm's neurons, batch statistics) and the scan's first
        pass in the patch family (--scan-steps batched steps on every class's and the untargeted
        goal's mask and pattern, the weights frozen). MODEL.onnx is the
        residual GTSRB CNN; `signnet` is a fresh copy of fineprune's signnet for 43 classes.
        Prints the seconds of each loop as one JSON line.
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

THREADS = int(os.environ.get("THREADS", "2"))
torch.set_num_threads(THREADS)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import Block, SignResNet, gtsrb, sticker  # noqa: E402  (the models' own definitions)


# ------------------------------------------------------- fineprune's built-in architectures
def lenet(classes=10):
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, classes))


def signnet(classes=10):
    layers, cin = [], 3
    for w in (32, 64, 128):
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
        cin = w
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 16, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, classes))


class ResNet18(nn.Module):
    """CIFAR-style: 3x3 stem, no initial max-pool (fineprune's resnet18)."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for w, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [Block(cin, w, s), Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def sign_resnet(classes=43):
    return SignResNet(classes)


def torchvision_net(name):
    def make(classes):
        import torchvision.models as tvm
        return getattr(tvm, name)(num_classes=classes)
    return make


def vit_tiny(classes):
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=4, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=classes)


NETS = {
    "lenet": (lenet, (1, 28, 28), 10),
    "signnet": (signnet, (3, 32, 32), 10),
    "resnet18": (ResNet18, (3, 32, 32), 10),
    "sign-resnet": (sign_resnet, (3, 32, 32), 43),
    # torchvision's mobile architectures (needs torchvision) at 64x64: depthwise convolutions,
    # squeeze-and-excitation, HardSwish, SiLU.
    "mobilenet_v2": (torchvision_net("mobilenet_v2"), (3, 64, 64), 10),
    "mobilenet_v3_small": (torchvision_net("mobilenet_v3_small"), (3, 64, 64), 10),
    "efficientnet_b0": (torchvision_net("efficientnet_b0"), (3, 64, 64), 10),
    # A ViT-Tiny-sized transformer (192 features, 3 heads, 6 layers) on 4x4 patches of 32x32
    # inputs: 65 tokens.
    "vit_tiny": (vit_tiny, (3, 32, 32), 10),
}


def throughput(name, batch, steps):
    make, shape, classes = NETS[name]
    torch.manual_seed(0)
    model = make(classes)
    x = torch.randn((batch,) + shape)
    y = torch.randint(0, classes, (batch,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    train = steps * batch / (time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        for _ in range(steps):
            model(x).argmax(1)
        infer = steps * batch / (time.perf_counter() - t)
    return {"arch": name, "batch": batch, "steps": steps, "threads": THREADS, "train": train, "inference": infer}


# ---------------------------------------------- the input-aware attack's cost (not built)
class EncoderDecoder(nn.Module):
    """IA's generator / mask network: conv-BN-ReLU blocks, max-pool down, upsample up, output
    squashed to [0, 1] (tanh / 2 + 0.5)."""

    def __init__(self, cin, cout, widths):
        super().__init__()

        def block(a, b, relu=True):
            return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b, momentum=0.05)] + ([nn.ReLU()] if relu else [])
        layers, c = [], cin
        for w in widths:
            layers += block(c, w) + block(w, w) + [nn.MaxPool2d(2)]
            c = w
        layers += block(c, c)
        rev = list(reversed(widths))
        for k, w in enumerate(rev):
            nxt = rev[k + 1] if k + 1 < len(rev) else None
            layers += [nn.Upsample(scale_factor=2, mode="bilinear")] + block(w, w) + (block(w, nxt) if nxt else block(w, cout, relu=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return torch.tanh(self.net(x)) / (2 + 1e-7) + 0.5


def input_aware(name, batch, steps):
    make, shape, classes = NETS[name]
    classes = 43 if name == "signnet" else classes
    widths = [16, 32] if shape[0] == 1 else [32, 64, 128]
    torch.manual_seed(0)
    c, g, m = make(classes), EncoderDecoder(shape[0], shape[0], widths), EncoderDecoder(shape[0], 1, widths)
    x1, x2 = torch.rand((batch,) + shape), torch.rand((batch,) + shape)
    y = torch.randint(0, classes, (batch,))
    opt_c = torch.optim.SGD(c.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(g.parameters(), lr=0.01, betas=(0.5, 0.9))
    opt_m = torch.optim.Adam(m.parameters(), lr=0.01, betas=(0.5, 0.9))
    n = batch // 10  # p_a = p_c = 0.1
    dist = lambda a, b: ((a - b) ** 2).flatten(1).mean(1).sqrt()  # noqa: E731
    soft = lambda u: torch.tanh(20 * u - 10) / (2 + 1e-7) + 0.5  # noqa: E731

    def clean():
        loss = F.cross_entropy(c(x1), y)
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()

    def joint():
        with torch.no_grad():
            m1, m2 = soft(m(x1[:n])), soft(m(x2[n:2 * n]))
        p1, p2 = g(x1[:n]), g(x2[n:2 * n])
        bd = x1[:n] + (p1 - x1[:n]) * m1
        cross = x1[n:2 * n] + (p2 - x1[n:2 * n]) * m2
        xs = torch.cat([bd, cross, x1[2 * n:]])
        div = (dist(x1[:n], x2[n:2 * n]) / (dist(p1, p2) + 1e-7)).mean()
        loss = F.cross_entropy(c(xs), y) + div
        opt_c.zero_grad()
        opt_g.zero_grad()
        loss.backward()
        opt_c.step()
        opt_g.step()

    def mask():
        m1, m2 = m(x1), m(x2)
        loss = 100 * F.relu(m1 - 0.032).mean() + (dist(x1, x2) / (dist(m1, m2) + 1e-7)).mean()
        opt_m.zero_grad()
        loss.backward()
        opt_m.step()

    out = {"arch": name, "batch": batch, "steps": steps, "threads": THREADS}
    for what, f in (("clean_step", clean), ("joint_step", joint), ("mask_step", mask)):
        m.train(what == "mask_step")  # the joint phase uses the mask network frozen
        f()
        t = time.perf_counter()
        for _ in range(steps):
            f()
        out[what] = (time.perf_counter() - t) / steps
    return out


# ------------------------------------------------------------------- the peer-style defense
def onnx_to_torch(path):
    """The residual GTSRB CNN's weights from its ONNX file, into the PyTorch module."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
    # The exporter deduplicates equal tensors: a name may be an Identity of another.
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            inits[n.output[0]] = inits[n.input[0]]
    model = sign_resnet()
    state = model.state_dict()
    missing = [k for k in state if k not in inits and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit(f"{path}: no initializer for {missing[:5]}")
    model.load_state_dict({k: inits.get(k, v) for k, v in state.items()})
    return model


def peer_fineprune(path, root, clean_fraction, curve, seed=0):
    mean, std = sidecar_normalization(path)
    times = {}
    t = time.perf_counter()
    x, y, tx, ty = gtsrb(root)
    times["load"] = time.perf_counter() - t
    cx, cy, vx, vy = defender_split(x, y, clean_fraction, mean, std, seed)
    tx_clean = (torch.from_numpy(tx) - mean) / std
    keep = ty != 14
    tx_trig = (torch.from_numpy(sticker(tx[keep], (1.0, 1.0, 0.0))) - mean) / std
    ty_t = torch.from_numpy(ty)
    target = torch.full((int(keep.sum()),), 14)
    model = onnx_to_torch(path).eval()

    def accuracy(m, xx, yy):
        with torch.no_grad():
            return sum((m(xx[i:i + 256]).argmax(1) == yy[i:i + 256]).sum().item() for i in range(0, len(yy), 256)) / len(yy)

    t = time.perf_counter()
    # Ranking: mean activation of the last block's output channels on clean validation data
    # (a forward hook, as the toolkits do).
    acts = []
    h = model.layer3.register_forward_hook(lambda mod, i, o: acts.append(o.mean(dim=(0, 2, 3)) * o.shape[0]))
    base = accuracy(model, vx, vy)
    h.remove()
    order = torch.argsort(torch.stack(acts).sum(0) / len(vy)).tolist()
    times["ranking"] = time.perf_counter() - t
    t = time.perf_counter()
    # Peer style: mask one more channel, re-run the whole network on the validation set.
    mask = torch.ones(128)
    h = model.layer3.register_forward_hook(lambda mod, i, o: o * mask.view(1, -1, 1, 1))
    pruned = 0
    for c in order:
        mask[c] = 0.0
        if base - accuracy(model, vx, vy) > 0.04:
            mask[c] = 1.0
            break
        pruned += 1
    times["pruning sweep"] = time.perf_counter() - t
    t = time.perf_counter()
    test_curve = []
    if curve:
        # The evaluation-only curve fineprune reports: every level, clean and triggered test.
        chosen = mask.clone()
        for k in range(len(order) + 1):
            mask.fill_(1.0)
            mask[order[:k]] = 0.0
            test_curve.append((accuracy(model, tx_clean, ty_t), accuracy(model, tx_trig, target)))
        mask.copy_(chosen)
    times["test curve"] = time.perf_counter() - t
    t = time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):
        model.train()
        p = torch.randperm(len(cy), generator=g)
        for i in range(0, len(p), 64):
            b = p[i:i + 64]
            loss = F.cross_entropy(model(cx[b]), cy[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        accuracy(model, vx, vy)
    times["fine-tuning"] = time.perf_counter() - t
    t = time.perf_counter()
    after = (accuracy(model, vx, vy), accuracy(model, tx_clean, ty_t), accuracy(model, tx_trig, target))
    times["evaluation"] = time.perf_counter() - t
    h.remove()
    return {"pruned": pruned, "after_val_test_asr": after, "curve_levels": len(test_curve), "channels": 128, "val_before": base, "seconds_by_stage": times,
            "seconds": sum(times.values()), "seconds_without_load": sum(v for k, v in times.items() if k != "load")}


def sidecar_normalization(path):
    """The mean and std an exported model was trained with, from its .toml sidecar."""
    side = dict(l.split(" = ", 1) for l in open(path[:-5] + ".toml").read().splitlines() if " = " in l)
    return tuple(torch.tensor(json.loads(side[k])).view(1, -1, 1, 1) for k in ("mean", "std"))


def defender_indices(n, clean_fraction, seed=0):
    """GTSRB's training split divided as fineprune divides it (counts, not the same indices): a
    seeded 10% is validation, the defender holds a fraction of the rest. Returns (clean, val)."""
    perm = np.random.default_rng(seed).permutation(n)
    nval = n // 10
    return perm[nval:][: max(1, round(clean_fraction * (n - nval)))], perm[:nval]


def defender_split(x, y, clean_fraction, mean, std, seed=0):
    """The normalised clean inputs and labels, then the validation ones (see defender_indices)."""
    clean, val = defender_indices(len(y), clean_fraction, seed)
    xs = (torch.from_numpy(x) - mean) / std
    return xs[clean], torch.from_numpy(y[clean]), xs[val], torch.from_numpy(y[val])


def write_defender_split(npz, root, clean_fraction, seed=0):
    """The defender's split for both sides of a benchmark, as an .npz fineprune reads (`npz:`
    data with --clean-fraction 1): clean data, validation, and 512 validation images as a token
    test split, so that fineprune carves nothing more off."""
    x, y, _, _ = gtsrb(root)
    clean, val = defender_indices(len(y), clean_fraction, seed)
    np.savez(npz, x=x[clean], y=y[clean], x_val=x[val], y_val=y[val], x_test=x[val[:512]], y_test=y[val[:512]])


def peer_loops(what, root, clean_fraction, epochs, fst_epochs, anp_steps, scan_steps, npz, seed=0):
    import copy
    import math
    if what == "signnet":
        torch.manual_seed(seed)
        make = lambda: signnet(43)  # noqa: E731
        mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    else:
        mean, std = sidecar_normalization(what)
        make = lambda: onnx_to_torch(what)  # noqa: E731
    # The defender's split both sides read, so every loop trains and validates on the same images.
    if not os.path.exists(npz):
        write_defender_split(npz, root, clean_fraction, seed)
    d = np.load(npz)
    cx, cy = (torch.from_numpy(d["x"]) - mean) / std, torch.from_numpy(d["y"]).long()
    vx, vy = (torch.from_numpy(d["x_val"]) - mean) / std, torch.from_numpy(d["y_val"]).long()
    g = torch.Generator().manual_seed(seed)

    def accuracy(m):
        m.eval()
        with torch.no_grad():
            return sum((m(vx[i:i + 256]).argmax(1) == vy[i:i + 256]).sum().item() for i in range(0, len(vy), 256)) / len(vy)

    def epoch_loop(model, opt, epochs, batch, step_hook=None, loss_extra=None, sched=None):
        best, best_state, per_epoch = -1.0, None, []
        for _ in range(epochs):
            t = time.perf_counter()
            model.train()
            p = torch.randperm(len(cy), generator=g)
            for i in range(0, len(p), batch):
                b = p[i:i + batch]
                loss = F.cross_entropy(model(cx[b]), cy[b])
                if loss_extra is not None:
                    loss = loss + loss_extra()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step_hook is not None:
                    step_hook()
            if sched is not None:
                sched.step()
            acc = accuracy(model)
            if acc > best:
                best, best_state = acc, copy.deepcopy(model.state_dict())
            per_epoch.append(time.perf_counter() - t)
        model.load_state_dict(best_state)
        return per_epoch

    out = {"model": what, "clean": len(cy), "val": len(vy), "threads": THREADS}
    # Fine-tuning: Adam 1e-4, batch 64.
    model = make()
    out["finetune_epoch_seconds"] = epoch_loop(model, torch.optim.Adam(model.parameters(), lr=1e-4), epochs, 64)
    # FST: the head (the last Linear) re-initialised, the penalty and the norm projection.
    model = make()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    w0 = head.weight.detach().clone()
    norm0 = w0.norm()
    alpha = min(0.1, 1.25 / float(norm0 ** 2))
    head.reset_parameters()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, fst_epochs)

    def rescale():
        with torch.no_grad():
            head.weight.mul_(norm0 / head.weight.norm())
    out["fst_epoch_seconds"] = epoch_loop(model, opt, fst_epochs, 128, rescale, lambda: alpha * (head.weight * w0).sum(), sched)
    # ANP's mask optimisation over every BatchNorm's neurons.
    model = make()
    for q in model.parameters():
        q.requires_grad_(False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    masks = [torch.ones(b.num_features, requires_grad=True) for b in bns]
    state = {"scale": None, "coef": None}

    def hook(k):
        def f(mod, inp, o):
            c = o.shape[1]
            scale = masks[k] if state["scale"] is None else state["scale"][k]
            coef = torch.ones(c) if state["coef"] is None else state["coef"][k]
            return o * scale.view(1, c, 1, 1) + mod.bias.view(1, c, 1, 1) * (coef - scale).view(1, c, 1, 1)
        return f
    for k, b in enumerate(bns):
        b.register_forward_hook(hook(k))
    model.train()  # batch statistics, as fineprune's default
    for b in bns:
        b.momentum = 0.0  # the running statistics are never changed
    mopt = torch.optim.SGD(masks, lr=0.2, momentum=0.9)
    eps = 0.4
    t = time.perf_counter()
    p = torch.randperm(len(cy), generator=g)
    at = 0
    for _ in range(anp_steps):
        if at + 128 > len(p):
            p, at = torch.randperm(len(cy), generator=g), 0
        b = p[at:at + 128]
        at += 128
        x, y = cx[b], cy[b]
        delta = [(torch.rand(m.shape[0]) * 2 - 1).mul_(eps).requires_grad_() for m in masks]
        xi = [(torch.rand(m.shape[0]) * 2 - 1).mul_(eps).requires_grad_() for m in masks]
        state["scale"] = [m.detach() + d for m, d in zip(masks, delta)]
        state["coef"] = [1 + v for v in xi]
        gr = torch.autograd.grad(F.cross_entropy(model(x), y), delta + xi)
        with torch.no_grad():
            delta = [(d + gd.sign() * eps).clamp(-eps, eps) for d, gd in zip(delta, gr[:len(delta)])]
            xi = [(v + gv.sign() * eps).clamp(-eps, eps) for v, gv in zip(xi, gr[len(delta):])]
        state["scale"], state["coef"] = None, None
        loss_nat = F.cross_entropy(model(x), y)
        state["scale"] = [m + d for m, d in zip(masks, delta)]
        state["coef"] = [1 + v for v in xi]
        loss_rob = F.cross_entropy(model(x), y)
        state["scale"], state["coef"] = None, None
        loss = 0.2 * loss_nat + 0.8 * loss_rob
        mopt.zero_grad()
        loss.backward()
        mopt.step()
        with torch.no_grad():
            for m in masks:
                m.clamp_(0, 1)
    out["anp_steps"] = anp_steps
    out["anp_seconds"] = time.perf_counter() - t
    assert math.isfinite(loss.item())
    # The scan's first pass in its patch family (src/scan/mod.rs, Inversion::step): every
    # class's mask and pattern and the untargeted goal's in one batch, per_class clean images
    # each (512 images in all at most, at least 8 per goal), the weights frozen, Adam (0.1,
    # betas 0.5/0.9) on the trigger tensors, Neural Cleanse's lambda schedule.
    model = make().eval()
    for q in model.parameters():
        q.requires_grad_(False)
    raw = torch.from_numpy(d["x"])
    k = 43
    goals = k + 1
    per = max(8, min(24, 512 // k))  # ScanConfig::first_pass_per_class at the defaults
    _, c, h, w = raw.shape
    a = torch.full((goals, 1, h, w), -2.0, requires_grad=True)
    bpat = torch.zeros((goals, c, h, w), requires_grad=True)
    sopt = torch.optim.Adam([a, bpat], lr=0.1, betas=(0.5, 0.9))
    lam = torch.tensor([1e-3] * goals)
    up, down = [0] * goals, [0] * goals
    pools = [torch.nonzero(cy != t).flatten() for t in range(k)] + [torch.arange(len(cy))]
    rows = torch.arange(goals).repeat_interleave(per)
    away = (rows == k).float()
    t = time.perf_counter()
    for _ in range(scan_steps):
        idx = torch.cat([pool[torch.randint(len(pool), (per,), generator=g)] for pool in pools])
        labels = torch.where(rows == k, cy[idx], rows)
        m, pat = torch.sigmoid(a), torch.sigmoid(bpat)
        size = m.sum(dim=(1, 2, 3))
        stamped = raw[idx] * (1 - m[rows]) + pat[rows] * m[rows]
        logits = model((stamped - mean) / std)
        logp = F.log_softmax(logits, 1).gather(1, labels.view(-1, 1)).flatten()
        leave = (1 - logp.exp()).clamp_min(1e-6).log()
        loss = -(logp * (1 - away) + leave * away).sum() / per + (size * lam).sum()
        sopt.zero_grad()
        loss.backward()
        sopt.step()
        hit = logits.argmax(1)
        ok = torch.where(rows == k, hit != labels, hit == labels).float().view(goals, per).mean(1)
        for j in range(goals):
            if ok[j] >= 0.99:
                up[j], down[j] = up[j] + 1, 0
            else:
                up[j], down[j] = 0, down[j] + 1
            if up[j] >= 5:
                lam[j], up[j] = lam[j] * 1.5, 0
            elif down[j] >= 5:
                lam[j], down[j] = lam[j] / 1.5 ** 1.5, 0
    out["scan_steps"] = scan_steps
    out["scan_seconds"] = time.perf_counter() - t
    out["scan_images_per_step"] = goals * per
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("arch", nargs="+", choices=sorted(NETS))
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--steps", type=int, default=10)
    ia = sub.add_parser("input-aware")
    ia.add_argument("arch", nargs="+", choices=["lenet", "signnet"])
    ia.add_argument("--batch", type=int, default=128)
    ia.add_argument("--steps", type=int, default=5)
    e = sub.add_parser("export")
    e.add_argument("arch", choices=sorted(NETS))
    e.add_argument("out")
    f = sub.add_parser("peer-fineprune")
    f.add_argument("model")
    f.add_argument("--data-root", default="../shared/data")
    f.add_argument("--clean-fraction", type=float, default=0.05)
    f.add_argument("--no-curve", action="store_true")
    lp = sub.add_parser("peer-loops")
    lp.add_argument("model")
    lp.add_argument("--data-root", default="../shared/data")
    lp.add_argument("--clean-fraction", type=float, default=0.05)
    lp.add_argument("--epochs", type=int, default=5)
    lp.add_argument("--fst-epochs", type=int, default=5)
    lp.add_argument("--anp-steps", type=int, default=100)
    lp.add_argument("--scan-steps", type=int, default=60, help="steps of the scan's first pass (patch family)")
    lp.add_argument("--npz", required=True, help="the defender's split (clean, validation) in this .npz, written the first time; fineprune reads the same file")
    ds = sub.add_parser("defender-split")
    ds.add_argument("npz")
    ds.add_argument("--data-root", default="../shared/data")
    ds.add_argument("--clean-fraction", type=float, default=0.05)
    a = p.parse_args()
    if a.cmd == "defender-split":
        write_defender_split(a.npz, a.data_root, a.clean_fraction)
    elif a.cmd == "throughput":
        for name in a.arch:
            print(json.dumps(throughput(name, a.batch, a.steps)), flush=True)
    elif a.cmd == "input-aware":
        for name in a.arch:
            print(json.dumps(input_aware(name, a.batch, a.steps)), flush=True)
    elif a.cmd == "export":
        torch.manual_seed(0)
        make, shape, classes = NETS[a.arch]
        model = make(classes).eval()
        if a.arch.startswith("vit"):
            # fineprune reads transformers as PyTorch's default (torch.export) exporter writes them.
            torch.onnx.export(model, (torch.zeros((2,) + shape),), a.out, input_names=["input"], output_names=["logits"],
                              external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, torch.zeros((1,) + shape), a.out, dynamo=False, do_constant_folding=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=14)
    elif a.cmd == "peer-loops":
        print(json.dumps(peer_loops(a.model, a.data_root, a.clean_fraction, a.epochs, a.fst_epochs, a.anp_steps, a.scan_steps, a.npz)), flush=True)
    else:
        print(json.dumps(peer_fineprune(a.model, a.data_root, a.clean_fraction, not a.no_curve)), flush=True)


if __name__ == "__main__":
    main()
