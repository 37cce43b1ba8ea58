"""Long-form audio, measured side by side in one run.

1. Decode: peak RSS and audio seconds per CPU second of the decode stage over one 10 min, 1 h and 4 h file
   (wav, flac, mp3; 44.1 kHz stereo), streamed (this tree's Decode, energy cuts; and with Silero VAD) next to
   the whole-file Decode of an earlier commit (`--baseline`), each in a fresh process.
2. Cuts: word error rate of the real Whisper tiny.en (the transcription job, stitched transcript from
   clips/) over a 3-minute synthesized talk with a music bed under its middle minute, with hard cuts at
   30 s, energy cuts and VAD cuts; and how many cuts fall inside a sentence.

    .venv/bin/python bench/longform.py [--minutes 10 60 240] [--formats wav flac mp3] [--baseline REV|none]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}
RATE = 44100


def make_file(path: str, minutes: float, fmt: str) -> None:
    """Tones under noise with a slow envelope, written block by block (never whole in memory)."""
    import soundfile as sf

    major, subtype = FORMATS[fmt]
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", RATE, 2, subtype, format=major) as f:
        for start in range(0, int(minutes * 60 * RATE), RATE * 10):
            t = (start + np.arange(RATE * 10)) / RATE
            x = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.05 * t)) + 0.03 * rng.standard_normal(t.size)
            f.write(np.stack([x, 0.8 * x], axis=1).astype(np.float32))


ONE = """
import importlib.util, json, resource, sys, time
sys.path.insert(0, {root!r})
import pyarrow as pa
mode, path, old = sys.argv[1], sys.argv[2], sys.argv[3]
from operators.models import ModelSpec
if mode == "whole":  # the decode stage of the baseline commit: the whole file, then windows
    spec = importlib.util.spec_from_file_location("old_decode", old)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    stage = module.Decode(sample_rate=16000, window_s=30.0, long_audio="split", max_duration_s=86400.0,
                          cut_search_s=5.0, overlap_s=0.0)
    run = lambda t: [stage(t)]
else:
    from operators import decode
    from operators.config import DecodeCfg
    cfg = DecodeCfg(cut="vad" if mode == "vad" else "energy", max_duration_s=86400.0)
    stage = decode.Decode(**decode.options(cfg, ModelSpec(sample_rate=16000, window_s=30.0)))
    run = lambda t: stage(t)
table = pa.table({{"audio_uris": pa.array([[path]]), "audio_bytes": pa.array([[None]], pa.list_(pa.binary())),
                   "error": pa.array([None], pa.string())}})
t0 = time.process_time()
blocks, rows, errors = 0, 0, []
for block in run(table):
    blocks += 1; rows += block.num_rows; errors += [e for e in block["error"].to_pylist() if e]
cpu = time.process_time() - t0
peak = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
print(json.dumps({{"cpu_s": cpu, "peak_mib": peak / 1024, "rows": rows, "blocks": blocks, "errors": errors}}))
"""


def one(mode: str, path: str, old: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE.format(root=ROOT), mode, path, old], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_bench(work: str, minutes: list[float], formats: list[str], baseline: str) -> None:
    old = os.path.join(work, "old_decode.py")
    if baseline != "none":
        with open(old, "w") as f:
            f.write(subprocess.run(["git", "-C", ROOT, "show", f"{baseline}:operators/decode.py"], check=True,
                                   capture_output=True, text=True).stdout)
    print(f"{'file':<14} {'mode':<18} {'x realtime/core':>16} {'peak RSS MiB':>13} {'rows':>5} {'blocks':>6}")
    results = {}
    for fmt in formats:
        for m in minutes:
            path = os.path.join(work, f"{m:g}min.{fmt}")
            make_file(path, m, fmt)
            modes = ["stream", "vad"] + (["whole"] if baseline != "none" else [])
            for mode in modes:
                r = one(mode, path, old)
                assert not r["errors"], r["errors"]
                results[(fmt, m, mode)] = r
                label = {"stream": "streamed (energy)", "vad": "streamed + VAD", "whole": f"whole ({baseline})"}[mode]
                print(f"{os.path.basename(path):<14} {label:<18} {m * 60 / r['cpu_s']:16.0f} {r['peak_mib']:13.0f} "
                      f"{r['rows']:5d} {r['blocks']:6d}", flush=True)
            os.remove(path)
        lo, hi = min(minutes), max(minutes)
        s = results[(fmt, hi, "stream")]["peak_mib"] / results[(fmt, lo, "stream")]["peak_mib"]
        line = f"{fmt}: streamed peak RSS {hi:g} min / {lo:g} min = {s:.2f}x"
        if baseline != "none":
            speed = [(m * 60 / results[(fmt, m, "stream")]["cpu_s"]) / (m * 60 / results[(fmt, m, "whole")]["cpu_s"])
                     for m in minutes]
            line += "; streamed/whole throughput " + ", ".join(f"{m:g} min {v:.2f}x" for m, v in zip(minutes, speed))
        print(line, flush=True)


def wer_bench(work: str) -> None:
    import jiwer
    import pyarrow.parquet as pq
    import soundfile as sf

    from tools.assets import music, talk

    wave, rate, sentences = talk(180.0, seed=3)
    bed = music(np.random.default_rng(3), 60.0, rate)
    bed /= np.abs(bed).max()
    a = int(60 * rate)
    wave[a:a + len(bed)] += 0.25 * bed[:len(wave) - a]  # about -12 dB under the speech, minute 1 to 2
    path = os.path.join(work, "talk-music.wav")
    sf.write(path, wave, rate)
    manifest = os.path.join(work, "talk.jsonl")
    with open(manifest, "w") as f:
        f.write(json.dumps({"id": "talk", "audio": path}) + "\n")
    norm = lambda s: " ".join(re.sub(r"[^a-z0-9' ]", " ", s.lower()).split())  # noqa: E731
    reference = norm(" ".join(s for _, _, s in sentences))
    print(f"talk: {len(wave) / rate:.0f} s, {len(sentences)} sentences, music under 60-120 s")
    for name, extra in [("hard cuts at 30 s", ["decode.cut_search_s=0"]), ("energy cuts", ["decode.cut=energy"]),
                        ("VAD cuts", ["decode.cut=vad"])]:
        out = os.path.join(work, f"out-{name.split()[0]}")
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "jobs.transcribe", "--config", "configs/transcribe-demo.yaml",
                        "--input", manifest, "--output", out, "--fresh", *extra], cwd=ROOT, check=True,
                       capture_output=True)
        clip = pq.read_table(os.path.join(out, "clips")).to_pylist()[0]
        parts = sorted(glob.glob(os.path.join(out, "part-*.parquet")))  # the window rows, not clips/
        windows = pq.ParquetDataset(parts).read(columns=["segment_end_s"]).column(0).to_pylist()
        inside = sum(any(s < t < e for s, e, _ in sentences) for t in sorted(windows)[:-1])
        print(f"{name:<18} WER {jiwer.wer(reference, norm(clip['text'] or '')):.3f}  windows {len(windows)}  "
              f"cuts inside a sentence {inside}  ({time.time() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60, 240])
    ap.add_argument("--formats", nargs="+", default=list(FORMATS))
    ap.add_argument("--baseline", default="b79d3da", help="git revision whose whole-file decode to compare, or none")
    ap.add_argument("--skip", choices=["decode", "wer"], help="leave one part out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="earmark-longform-") as work:
        if args.skip != "decode":
            decode_bench(work, args.minutes, args.formats, args.baseline)
        if args.skip != "wer":
            wer_bench(work)
    print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
