#!/usr/bin/env python3
"""Writes the NumPy fixtures of tests/loaders_user.rs with NumPy itself (not our writer), and
the same images as PNG files in an ImageFolder tree, so the test can check that both loaders
give the same tensors.

usage: python3 scripts/make_npz_fixtures.py   (needs numpy and pillow; writes tests/fixtures/npz)
"""
import os

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "npz")
rng = np.random.default_rng(7)
# 9 colour images of 6x5 (H x W), 3 classes; labels as int64 and, in one file, uint8.
x = rng.integers(0, 256, size=(9, 6, 5, 3), dtype=np.uint8)
y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2], dtype=np.int64)
os.makedirs(OUT, exist_ok=True)
np.savez(os.path.join(OUT, "nhwc_u8.npz"), x=x, y=y)
np.savez_compressed(os.path.join(OUT, "nchw_f32.npz"), x=(x.transpose(0, 3, 1, 2) / 255.0).astype(np.float32), y=y.astype(np.uint8))
np.savez(os.path.join(OUT, "nhwc_f64_splits.npz"), x=x[:5] / 255.0, y=y[:5].astype(np.int32),
         x_val=x[5:7] / 255.0, y_val=y[5:7].astype(np.int16), x_test=x[7:] / 255.0, y_test=y[7:])
np.save(os.path.join(OUT, "x.npy"), x)
np.save(os.path.join(OUT, "y.npy"), y)
# Bad files.
np.savez(os.path.join(OUT, "bad_lengths.npz"), x=x, y=y[:8])
np.savez(os.path.join(OUT, "bad_labels.npz"), x=x, y=y + 5)
np.savez(os.path.join(OUT, "bad_float_range.npz"), x=x.astype(np.float32), y=y)
np.savez(os.path.join(OUT, "bad_shape.npz"), x=np.zeros((9, 2, 6, 5, 3), np.uint8), y=y)
# The same images as PNG files: class folders named so that sorted order is not creation order.
names = ["zebra", "apple", "mango"]
for i, (img, label) in enumerate(zip(x, y)):
    d = os.path.join(OUT, "folder", sorted(names)[label])
    os.makedirs(d, exist_ok=True)
    Image.fromarray(img, "RGB").save(os.path.join(d, f"img{i}.png"))
# A .npy whose header declares far more data than the file holds.
with open(os.path.join(OUT, "x.npy"), "rb") as f:
    good = f.read()
header_end = good.index(b"\n") + 1
hdr = good[:header_end].replace(b"(9, 6, 5, 3)", b"(900000000, 6, 5, 3)")
# Keep the header length a multiple of 64 as the format asks.
pad = (64 - len(hdr) % 64) % 64
hdr = hdr[:-1] + b" " * pad + b"\n"
hdr = hdr[:8] + (len(hdr) - 10).to_bytes(2, "little") + hdr[10:]
with open(os.path.join(OUT, "bad_declared.npy"), "wb") as f:
    f.write(hdr + good[header_end:])
print("wrote", OUT)
