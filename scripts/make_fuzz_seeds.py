#!/usr/bin/env python3
"""Writes the synthetic fuzz seeds in fuzz/corpus that are not copies of test fixtures: small
WAV, PNM, IDX and GTSRB-style CSV files and FSDD-style names, all made up here (no dataset
file is committed, and seed names carry no file extension: the targets name their scratch
files themselves; scripts/fuzz.sh adds a few real files from ../shared/data to its working
corpus at run time). Standard library only. Run from the repository root."""
import gzip
import math
import os
import random
import struct
import wave

random.seed(1)
C = "fuzz/corpus"


def put(path, data):
    os.makedirs(os.path.dirname(f"{C}/{path}"), exist_ok=True)
    with open(f"{C}/{path}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def wav(path, channels, width, frames):
    """An 8 kHz tone, as FSDD recordings are sampled."""
    os.makedirs(os.path.dirname(f"{C}/{path}"), exist_ok=True)
    with wave.open(f"{C}/{path}", "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(8000)
        out = b""
        for i in range(frames):
            v = math.sin(2 * math.pi * 440 * i / 8000)
            sample = struct.pack("<h", int(v * 12000)) if width == 2 else bytes([int(128 + v * 100)])
            out += sample * channels
        w.writeframes(out)


def noise(n):
    return bytes(random.randrange(256) for _ in range(n))


wav("wav/tone16", 1, 2, 800)
wav("wav/stereo8", 2, 1, 400)
put("pnm/grey", b"P5\n6 5\n255\n" + noise(30))
put("pnm/colour", b"P6\n# synthetic\n4 3\n255\n" + noise(36))
put("pnm/ascii", "P2\n2 2\n15\n0 5\n10 15\n")
with open(f"{C}/pnm/colour", "rb") as f:
    put("image_decode/ppm", bytes([3]) + f.read())  # first byte 3: the target reads it as .ppm
labels = struct.pack(">II", 2049, 3) + bytes([1, 7, 3])
put("idx/images3", struct.pack(">IIII", 2051, 3, 4, 4) + noise(48))
put("idx/labels3", labels)
put("idx/labels3-gz", gzip.compress(labels, mtime=0))
header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
put("gtsrb_csv/train-rows", header + "00000_00000.ppm;30;31;5;6;24;25;0\n00001_00002.ppm;40;38;4;5;35;33;0\n")
put("gtsrb_csv/test-rows", header + "00000.ppm;53;54;6;5;48;49;16\n")
for i, name in enumerate(["0_alice_0.wav", "9_bob_49.wav", "3_carol_10.wav", "x_y_z.wav", "1__2.wav"]):
    put(f"fsdd_name/name{i}", name)
# data_to_shape: six header bytes (bit 0 of the first: 1 or 3 channels; bit 1: npz or CIFAR
# binary; then height-1 and width-1 as little-endian u16, then classes-2), followed by the file.
def shape_head(kind_cifar, channels, side, classes):
    flags = (1 if channels == 3 else 0) | (2 if kind_cifar else 0)
    return bytes([flags]) + struct.pack("<HH", side - 1, side - 1) + bytes([classes - 2])
for name in ["nchw_f32.npz", "nhwc_u8.npz"]:
    with open(f"{C}/npz/{name}", "rb") as f:
        put(f"data_to_shape/{name}-28", shape_head(False, 1, 28, 10) + f.read())
with open(f"{C}/cifar/two10.bin", "rb") as f:
    put("data_to_shape/cifar-32", shape_head(True, 3, 32, 10) + f.read())
# graph_shapes: little-endian u32 words read in order: the input's (channels, height, width),
# the layer count, then per layer an op selector (0 conv, 1 max pool, 2 avg pool, 3 batch norm,
# 4 relu, 5 global pool) and its attributes, finally the Linear's in and out features.
def words(*w):
    return b"".join(struct.pack("<I", x) for x in w)
conv = lambda out, k, s, p: [0, out, 1, k, k, s, s, p, p, 1, 1, 0]
put("graph_shapes/lenet", words(1, 28, 28, 5, *conv(6, 5, 1, 0), 4, 1, 2, 2, 2, 2, 0, 0, 0, *conv(16, 5, 1, 0), 5, 16, 10))
put("graph_shapes/bn-pool", words(3, 32, 32, 4, *conv(8, 3, 2, 1), 3, 4, 2, 3, 3, 1, 1, 1, 1, 0, 512, 43))
