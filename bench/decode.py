"""Decode throughput: our decode stage's loader (fsspec + soundfile + soxr + mono) vs librosa.load(sr=16000),
DataFlow-MM's way, on the same files, one process, measured side by side in one run.

    pip install -e '.[bench]'   # librosa: `make setup` leaves it out (docs/bench.md)
    python bench/decode.py [--seconds 5 30] [--repeat 3]

Prints audio-seconds decoded per CPU-second for each, per format, and the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from operators.decode import load  # noqa: E402

FORMATS = [("wav", "WAV", None), ("flac", "FLAC", None), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")]


def make(folder: str, seconds: list[float]) -> dict[str, list[tuple[str, float]]]:
    rng = np.random.default_rng(0)
    files: dict[str, list[tuple[str, float]]] = {}
    for ext, fmt, subtype in FORMATS:
        for rate in (44100, 48000):
            for secs in seconds:
                t = np.arange(int(rate * secs)) / rate
                x = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
                path = os.path.join(folder, f"{rate}-{secs:g}s.{ext}")
                sf.write(path, np.stack([x, 0.7 * x], axis=1), rate, format=fmt, subtype=subtype)
                files.setdefault(ext, []).append((path, secs))
    return files


def rate(fn, files, repeat: int) -> float:
    """Audio seconds per CPU second (process time: decoding is CPU work; no threads are involved)."""
    fn(files[0][0])  # warm-up: imports, codec set-up
    t0 = time.process_time()
    for _ in range(repeat):
        for path, _ in files:
            fn(path)
    return repeat * sum(s for _, s in files) / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[5, 15, 30])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import librosa

    with tempfile.TemporaryDirectory() as folder:
        files = make(folder, a.seconds)
        print(f"{'format':<6} {'ours (x realtime/core)':>24} {'librosa':>10} {'ratio':>7}")
        totals = []
        for ext, group in files.items():
            ours = rate(lambda p: load(p, 16000), group, a.repeat)
            theirs = rate(lambda p: librosa.load(p, sr=16000, mono=True), group, a.repeat)
            totals.append((ours, theirs))
            print(f"{ext:<6} {ours:>24.0f} {theirs:>10.0f} {ours / theirs:>6.2f}x")
        ours = len(totals) / sum(1 / o for o, _ in totals)  # harmonic means: equal audio per format
        theirs = len(totals) / sum(1 / t for _, t in totals)
        print(f"{'all':<6} {ours:>24.0f} {theirs:>10.0f} {ours / theirs:>6.2f}x")
        print(f"RESULT decode_ours_x_realtime_per_core={ours:.0f} librosa={theirs:.0f} ratio={ours / theirs:.2f}")


if __name__ == "__main__":
    main()
