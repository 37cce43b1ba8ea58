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
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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


def throughput(files: list[str]) -> tuple[float, float]:
    """Audio seconds per CPU second: decode alone (to 16 kHz mono), and decode plus both identities."""
    from operators.decode import decode
    from operators.fingerprint import identify

    def run(fingerprint: bool) -> float:
        audio, t0 = 0.0, time.process_time()
        for path in files:
            clip = decode(path, None, 16000)
            if fingerprint:
                identify(clip.read(a, a + 60 * 16000) for a in range(0, clip.samples, 60 * 16000))
            else:
                clip.read()
            audio += clip.duration
            clip.close()
        return audio / (time.process_time() - t0)

    run(False)  # warm-up
    return run(False), run(True)


def chromaprint(path: str) -> bytes:
    """Chromaprint's raw fingerprint (fpcalc, Debian's libchromaprint-tools) as little-endian 32-bit words."""
    # fpcalc exits 3 over a harmless end-of-file warning on some files: its printed fingerprint is what counts.
    out = subprocess.run(["fpcalc", "-raw", "-length", "120", path], capture_output=True, text=True).stdout
    values = next((line.split("=", 1)[1] for line in out.splitlines() if line.startswith("FINGERPRINT=")), "")
    return np.array([int(v) for v in values.split(",") if v], np.int64).astype("<u4").tobytes()


def separation(rows: list[dict], fingerprints: dict[str, bytes], max_shift: int) -> dict:
    """Lowest bit error rate (best offset) of every pair: copies of one clip vs distinct clips."""
    from operators.fingerprint import bit_error_rate

    same, other = [], []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            ber = bit_error_rate(fingerprints[a["id"]], fingerprints[b["id"]], max_shift)
            (same if a["group"] == b["group"] else other).append(ber)
    same, other = np.array(same), np.array(other)
    threshold = 0.35
    return {"copies_p50": float(np.median(same)), "copies_p95": float(np.percentile(same, 95)),
            "copies_max": float(same.max()), "distinct_min": float(other.min()),
            "recall_at_0.35": float((same <= threshold).mean()), "false_pairs_at_0.35": int((other <= threshold).sum()),
            "empty": sum(not f for f in fingerprints.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None)
    ap.add_argument("--chromaprint", type=int, default=60, help="originals compared pairwise with Chromaprint "
                    "(fpcalc) and with ours; 0 leaves it out")
    args = ap.parse_args()
    import pyarrow.parquet as pq
    import soundfile as sf

    from tools.assets import corpus

    work = args.work or tempfile.mkdtemp(prefix="earmark-dedup-")
    t0 = time.time()
    rows = corpus(os.path.join(work, "audio"), args.clips, args.seed)
    manifest = os.path.join(work, "corpus.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps({k: r[k] for k in ("id", "audio", "group")}) + "\n" for r in rows)
    hours = sum(sf.info(r["audio"]).duration for r in rows) / 3600
    print(f"corpus: {args.clips} originals, {len(rows) - args.clips} copies, {hours:.1f} h of audio, made in "
          f"{time.time() - t0:.0f} s", flush=True)
    counts = {}
    for r in rows:
        for t in r["transforms"]:
            counts[t] = counts.get(t, 0) + 1
    print("transforms applied: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)

    out = os.path.join(work, "out")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "jobs.dedup", "--config", "configs/dedup.yaml", "--input", manifest,
                           "--output", out, "decode.concurrency=2", "decode.num_cpus=1", "decode.batch_size=8",
                           "write.rows_per_file=200", "dedup.exclude=[]"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import glob

    table = [r for f in sorted(glob.glob(os.path.join(out, "part-*.parquet")))
             for r in pq.read_table(f, columns=["id", "duplicate_of", "error"]).to_pylist()]
    clusters = {r["id"]: r["duplicate_of"] or r["id"] for r in table}
    s = score(rows, clusters)
    print(f"dedup job: {time.time() - t0:.0f} s wall for {len(rows)} clips; errors {sum(bool(r['error']) for r in table)}")
    print(f"recall {s['recall']:.4f} ({s['found']} of {s['copies']} copies in their original's cluster); "
          f"false matches {s['false_match_rate']:.4f} ({s['merged']} of {s['originals']} originals merged); "
          f"rows in a foreign cluster {s['rows_in_a_foreign_cluster']}", flush=True)
    missed = [r for r in rows if r["transforms"] and clusters[r["id"]] != clusters[f"o{r['group']:05d}"]]
    if missed:
        print("missed copies by transform: " + json.dumps(dict(sorted(Counter(
            t for r in missed for t in r["transforms"]).items()))))

    sample = [r["audio"] for r in rows[:200]]
    decode_rate, fingerprint_rate = throughput(sample)
    print(f"throughput on {len(sample)} clips, one process: decode alone {decode_rate:.0f}x realtime, decode + "
          f"hash + fingerprint {fingerprint_rate:.0f}x realtime; ratio {fingerprint_rate / decode_rate:.2f}", flush=True)

    if args.chromaprint and shutil.which("fpcalc") is None:
        print("Chromaprint comparison left out: no fpcalc here (Debian: apt-get install libchromaprint-tools)")
    elif args.chromaprint:
        subset = [r for r in rows if r["group"] < args.chromaprint]
        from operators.decode import decode
        from operators.fingerprint import identify

        ours, theirs = {}, {}
        for r in subset:
            clip = decode(r["audio"], None, 16000)
            ours[r["id"]] = identify([clip.read()]).fingerprint
            clip.close()
            theirs[r["id"]] = chromaprint(r["audio"])
        a = separation(subset, ours, max_shift=34)  # 1.1 s at our 32 ms frames
        b = separation(subset, theirs, max_shift=9)  # 1.1 s at Chromaprint's 124 ms frames
        print(f"pairwise on {len(subset)} clips ({args.chromaprint} originals and their copies), best offset within 1.1 s:")
        for name, v in (("ours", a), ("chromaprint", b)):
            print(f"  {name:<12} copies BER median {v['copies_p50']:.3f} p95 {v['copies_p95']:.3f} max {v['copies_max']:.3f}; "
                  f"distinct min {v['distinct_min']:.3f}; at 0.35: recall {v['recall_at_0.35']:.3f}, "
                  f"false pairs {v['false_pairs_at_0.35']}; empty fingerprints {v['empty']}", flush=True)


if __name__ == "__main__":
    main()
