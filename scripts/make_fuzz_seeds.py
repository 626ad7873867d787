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
