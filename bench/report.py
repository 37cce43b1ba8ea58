"""The review page's players: MP3 (what jobs/report.py writes) vs Ogg Opus (what it wrote before) through
libsndfile, on the same windows, one process, measured side by side in one run.

    python bench/report.py [--audio .cache/longform/talk-10min.flac] [--window 30] [--windows 20]

The driver encodes up to 50 sample windows after every run, on its critical path. Prints CPU seconds per
window, bytes per window and the frames a decoder gets back for each codec, and the ratio of the times.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.report import PLAYER, PLAYER_RATE  # noqa: E402
from operators.decode import window  # noqa: E402

CODECS = {"mp3": PLAYER, "opus": dict(format="OGG", subtype="OPUS", compression_level=0.9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", default=".cache/longform/talk-10min.flac")
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--windows", type=int, default=20)
    a = ap.parse_args()
    waves = [np.clip(window(a.audio, i * a.window, (i + 1) * a.window, PLAYER_RATE), -1, 1) for i in range(a.windows)]
    print(f"{a.windows} windows of {a.window:g} s of {a.audio} at {PLAYER_RATE} Hz")
    cpu = {}
    for name, how in CODECS.items():
        t0, encoded = time.process_time(), []
        for w in waves:
            buf = io.BytesIO()
            sf.write(buf, w, PLAYER_RATE, **how)
            encoded.append(buf.getvalue())
        cpu[name] = (time.process_time() - t0) / len(waves)
        exact = sum(sf.info(io.BytesIO(e)).frames == len(w) for e, w in zip(encoded, waves))  # what a decoder gets
        print(f"{name:<5} {cpu[name]:.3f} CPU-s a window  {np.mean([len(e) for e in encoded]) / 1000:.0f} kB a window  "
              f"frames back exact {exact}/{len(waves)}")
    print(f"RESULT report_player_opus_over_mp3_cpu={cpu['opus'] / cpu['mp3']:.2f}")


if __name__ == "__main__":
    main()
