"""Audio deduplication: recall and false matches of the fingerprint on a generated corpus, and its speed
next to decode alone, measured in one run.

The corpus: distinct clips of 3-30 s (speech of different sentences via espeak-ng, melodies of tones and
chords, noise textures, music-like sequences), 44.1 or 48 kHz stereo, and 2-4 copies of each made with the
transforms a crawl produces: mp3 or ogg at 64-128 kbit/s (libsndfile's LAME and libvorbis), resampling to
16 kHz, gain of +-6 dB, a downmix to mono, up to 0.5 s of silence added or cut at the start. The dedup job
runs over it; every copy should point to its original's cluster, and no two originals should be merged.

    .venv/bin/python bench/dedup.py [--clips 500] [--seed 0] [--chromaprint]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORDS = ("the a one two small large red green quick slow river mountain city garden window table music "
         "morning evening engine station report project meeting doctor teacher child friend market bridge "
         "storm summer winter coffee letter phone street").split()
NOTES = 220.0 * 2 ** (np.arange(24) / 12)


def speech(rng, seconds: float) -> tuple[np.ndarray, int]:
    from jobs.assets import speak, trimmed

    pieces, rate, total = [], 22050, 0.0
    while total < seconds:
        text = " ".join(rng.choice(WORDS, rng.integers(5, 12))) + "."
        x, rate = speak(text)
        x = trimmed(x)
        pause = np.zeros(int(rng.uniform(0.2, 0.6) * rate), np.float32)
        pieces += [x, pause]
        total += (len(x) + len(pause)) / rate
    return np.concatenate(pieces)[:int(seconds * rate)], rate


def melody(rng, seconds: float, rate: int) -> np.ndarray:
    """Notes or chords of harmonic tones with attack/decay envelopes, at random tempo."""
    out = np.zeros(int(seconds * rate), np.float32)
    t0, beat = 0.0, rng.uniform(0.15, 0.6)
    while t0 < seconds:
        n = int(rng.integers(1, 4))
        length = beat * rng.integers(1, 4)
        a, b = int(t0 * rate), min(len(out), int((t0 + length) * rate))
        tt = np.arange(b - a) / rate
        env = np.minimum(tt / 0.01, 1) * np.exp(-tt * rng.uniform(1, 6))
        for f in rng.choice(NOTES, n, replace=False):
            out[a:b] += env * (np.sin(2 * np.pi * f * tt) + 0.3 * np.sin(4 * np.pi * f * tt)) / n
        t0 += length
    return out


def texture(rng, seconds: float, rate: int) -> np.ndarray:
    """Noise with a random spectral shape and random slow and fast amplitude modulation (wind, rain, hum)."""
    n = int(seconds * rate)
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    shape = np.ones_like(freqs)
    for _ in range(int(rng.integers(2, 5))):
        shape += rng.uniform(1, 8) * np.exp(-((np.log(freqs + 1) - np.log(rng.uniform(100, 6000))) ** 2) / 0.1)
    x = np.fft.irfft(spec * shape / (1 + freqs / rng.uniform(500, 4000)), n)
    t = np.arange(n) / rate
    am = 1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.1, 3) * t + rng.uniform(0, 6)) * rng.uniform(0.3, 1)
    bursts = (rng.random(n // 800 + 1) < rng.uniform(0.05, 0.4)).repeat(800)[:n] * rng.uniform(0, 2)
    return (x * (am + bursts) / np.abs(x).max()).astype(np.float32)


def music(rng, seconds: float, rate: int) -> np.ndarray:
    """Chords, a bass line and noise hits on a beat: music-like."""
    x = melody(rng, seconds, rate) + 0.5 * melody(rng, seconds, rate) * 0.5
    beat = rng.uniform(0.3, 0.7)
    for k in range(int(seconds / beat)):
        a = int(k * beat * rate)
        hit = rng.standard_normal(int(0.05 * rate)) * np.exp(-np.arange(int(0.05 * rate)) / (0.01 * rate))
        x[a:a + len(hit)] += 0.5 * hit[:len(x) - a]
    return x


def original(rng, kind: str) -> tuple[np.ndarray, int]:
    """A distinct clip of 3-30 s, 44.1 or 48 kHz stereo."""
    seconds = float(rng.uniform(3, 30))
    if kind == "speech":
        mono, rate = speech(rng, seconds)
        import soxr

        target = int(rng.choice([44100, 48000]))
        mono, rate = soxr.resample(mono, rate, target), target
    else:
        rate = int(rng.choice([44100, 48000]))
        mono = {"melody": melody, "texture": texture, "music": music}[kind](rng, seconds, rate)
    mono = 0.5 * mono / (np.abs(mono).max() + 1e-9)
    pan = rng.uniform(0.5, 1.0)
    return np.stack([mono, pan * mono], axis=1).astype(np.float32), rate


TRANSFORMS = ("mp3", "ogg", "resample", "gain", "downmix", "silence", "cut")


def copy(rng, x: np.ndarray, rate: int, path_stem: str, transforms=TRANSFORMS) -> tuple[str, list[str]]:
    """Write a transformed copy; returns its path and the transforms applied (1 to 3 of them)."""
    import soundfile as sf
    import soxr

    chosen = list(rng.choice(transforms, int(rng.integers(1, 4)), replace=False))
    y = x.copy()
    if "gain" in chosen:
        y *= 10 ** (rng.uniform(-6, 6) / 20)
    if "silence" in chosen:
        y = np.concatenate([np.zeros((int(rng.uniform(0.05, 0.5) * rate), y.shape[1]), np.float32), y])
    if "cut" in chosen:
        y = y[int(rng.uniform(0.05, 0.5) * rate):]
    if "downmix" in chosen:
        y = y.mean(axis=1, keepdims=True)
    if "resample" in chosen:
        y = soxr.resample(y, rate, 16000)
        rate = 16000
    y = np.clip(y, -1, 1)
    if "mp3" in chosen:
        # libsndfile maps compression_level 0..1 onto LAME's bitrates: 0.3-0.6 gives about 64-128 kbit/s.
        path = path_stem + ".mp3"
        sf.write(path, y, rate, format="MP3", bitrate_mode="CONSTANT", compression_level=float(rng.uniform(0.3, 0.6)))
    elif "ogg" in chosen:
        path = path_stem + ".ogg"
        sf.write(path, y, rate, format="OGG", subtype="VORBIS", compression_level=float(rng.uniform(0.5, 0.8)))
    else:
        path = path_stem + ".flac"
        sf.write(path, y, rate, format="FLAC")
    return path, chosen


def corpus(folder: str, clips: int, seed: int = 0, copies: tuple[int, int] = (2, 4), transforms=TRANSFORMS) -> list[dict]:
    """Manifest rows: originals (`group` = their index) and their copies (same group), shuffled."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    kinds = ["speech", "melody", "texture", "music"]
    rows = []
    for i in range(clips):
        x, rate = original(rng, kinds[i % len(kinds)])
        path = os.path.join(folder, f"o{i:05d}.wav")
        sf.write(path, x, rate)
        rows.append({"id": f"o{i:05d}", "audio": path, "group": i, "kind": kinds[i % len(kinds)], "transforms": []})
        for k in range(int(rng.integers(copies[0], copies[1] + 1))):
            p, applied = copy(rng, x, rate, os.path.join(folder, f"c{i:05d}-{k}"), transforms)
            rows.append({"id": f"c{i:05d}-{k}", "audio": p, "group": i, "kind": kinds[i % len(kinds)],
                         "transforms": applied})
    order = rng.permutation(len(rows))
    return [rows[j] for j in order]


def score(rows: list[dict], clusters: dict[str, str]) -> dict:
    """Recall: copies in their original's cluster; false matches: pairs of distinct originals merged."""
    by_id = {r["id"]: r for r in rows}
    copies = [r for r in rows if r["transforms"]]
    found = sum(clusters[r["id"]] == clusters[f"o{r['group']:05d}"] for r in copies)
    originals = [r for r in rows if not r["transforms"]]
    members: dict[str, set] = {}
    for r in originals:
        members.setdefault(clusters[r["id"]], set()).add(r["group"])
    merged = sum(len(g) - 1 for g in members.values())
    wrong = sum(by_id[r]["group"] != by_id[c]["group"] for r, c in clusters.items() if r in by_id and c in by_id)
    return {"copies": len(copies), "found": found, "recall": found / max(len(copies), 1),
            "originals": len(originals), "merged": merged, "false_match_rate": merged / max(len(originals), 1),
            "rows_in_a_foreign_cluster": wrong}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="earmark-dedup-")
    t0 = time.time()
    rows = corpus(os.path.join(work, "audio") if os.makedirs(os.path.join(work, "audio"), exist_ok=True) is None
                  else work, args.clips, args.seed)
    manifest = os.path.join(work, "corpus.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps({k: r[k] for k in ("id", "audio", "group")}) + "\n" for r in rows)
    print(f"corpus: {args.clips} originals, {len(rows) - args.clips} copies in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
