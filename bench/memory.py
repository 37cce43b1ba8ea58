"""Streaming memory: peak RSS of the driver and of the Ray workers (decode, prompt, engine actors and
the vLLM engine-core process) while the caption job runs on N and 10N rows. Flat is the target: the
pipeline streams, so memory must not grow with the manifest.

    python bench/memory.py [--rows 2000 20000] [--seconds 1]

RSS is sampled every 0.5 s with psutil. Needs `make assets` first.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEMO = os.path.join(ROOT, "configs", "caption-demo.yaml")


def make_manifest(folder: str, rows: int, seconds: float) -> str:
    """`rows` manifest lines over a few distinct clips (decoding work per row stays real)."""
    t = np.arange(int(16000 * seconds)) / 16000
    for k in range(8):
        sf.write(os.path.join(folder, f"c{k}.wav"), 0.3 * np.sin(2 * np.pi * (300 + 50 * k) * t), 16000)
    path = os.path.join(folder, f"m{rows}.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps({"id": f"r{i}", "audio": f"c{i % 8}.wav"}) + "\n" for i in range(rows))
    return path


class Sampler(threading.Thread):
    """Peak RSS of this process and of every Ray worker / vLLM process, sampled until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.driver = self.worker = self.workers = 0
        self.running = True

    def run(self):
        import psutil

        me = psutil.Process()
        while self.running:
            total = biggest = 0
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if cmd.startswith(("ray::", "VLLM::")) and p.info["memory_info"]:
                    total += p.info["memory_info"].rss
                    biggest = max(biggest, p.info["memory_info"].rss)
            self.driver = max(self.driver, me.memory_info().rss)
            self.worker, self.workers = max(self.worker, biggest), max(self.workers, total)
            time.sleep(0.5)


def measure(rows: int, seconds: float, folder: str) -> dict:
    from jobs import caption
    from jobs.runner import run
    from operators import config

    manifest = make_manifest(folder, rows, seconds)
    overrides = ["sampling.max_tokens=1", "sampling.min_tokens=0", "write.rows_per_file=256",
                 "engine.batch_size=64", "decode.batch_size=64"]
    cfg = config.load(DEMO, overrides, input=manifest, output=os.path.join(folder, f"out{rows}"))
    sampler = Sampler()
    sampler.start()
    t0 = time.time()
    summary = run(cfg, caption.JOB, fresh=True)
    sampler.running = False
    sampler.join()
    assert summary["rows_out"] == rows, summary
    mib = 2 ** 20
    return {"rows": rows, "wall_s": round(time.time() - t0, 1), "driver_mib": sampler.driver // mib,
            "largest_worker_mib": sampler.worker // mib, "all_workers_mib": sampler.workers // mib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs=2, default=[2000, 20000])
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        small, big = (measure(n, a.seconds, folder) for n in a.rows)
    for r in (small, big):
        print(json.dumps(r))
    ratios = {k: round(big[k] / max(small[k], 1), 2) for k in ("driver_mib", "largest_worker_mib", "all_workers_mib")}
    print("RESULT " + " ".join(f"{k.removesuffix('_mib')}_ratio={v}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
