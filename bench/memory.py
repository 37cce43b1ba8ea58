"""Streaming memory: peak RSS of the driver and of the Ray workers (decode, prompt, engine actors and
the vLLM engine-core process) while the caption job runs on N and 10N rows. Flat is the target: the
pipeline streams, so memory must not grow with the manifest.

    python bench/memory.py [--rows 2000 20000] [--seconds 1]

`--audio`: where the audio travels. 30 s windows, two prompts, the production config's batch sizes
(configs/caption.yaml), run twice side by side: "before", each window's audio copied once per prompt
after the prompt stage and handed on by the engine to the end (as the job ran before the audio left with
the requests and the engine stage fanned out the prompts), and "after", as the job runs now. Printed: the
object store's peak (sampled from the raylet) and the bytes a row each stage handed on (Ray Data's stats).

    python bench/memory.py --audio [--windows 96]

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


class StorePeak(threading.Thread):
    """Peak bytes in the object store of the local Ray, sampled from its raylet until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self.running = True

    def run(self):
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        while self.running:
            self.peak = max(self.peak, get_memory_info_reply(state).store_stats.object_store_bytes_used)
            time.sleep(0.2)


def copied(batch):
    """The fan-out before the engine (the job before): a window's row once per prompt, each a copy of its audio."""
    import pyarrow as pa
    import pyarrow.compute as pc

    asks = batch.column("asks")
    out = batch.take(pc.list_parent_indices(asks))
    one = pa.ListArray.from_arrays(pa.array(range(len(out) + 1), pa.int32()), pc.list_flatten(asks).combine_chunks())
    return out.set_column(out.column_names.index("asks"), "asks", one)


def audio_run(manifest: str, out: str, before: bool) -> dict:
    """The caption job with the production batch sizes; `before`: the prompts' rows copy the audio and the
    engine hands it on."""
    import ray
    import yaml

    from jobs import caption
    from jobs.runner import LOCAL, Job, run
    from operators import config, decode, generate, prompt

    def build(ds, cfg, spec, prompts, column):
        ds = decode.apply(ds, cfg, spec)
        ds = prompt.apply(ds, cfg, spec, prompts, conversations=False)
        if before:
            ds = ds.map_batches(copied, batch_format="pyarrow", num_cpus=0.25)
        return generate.apply(ds, cfg, spec, column, keep_audio=before)

    with open(os.path.join(ROOT, "configs", "caption.yaml")) as f:
        prod = yaml.safe_load(f)
    sizes = [f"decode.batch_size={prod['decode']['batch_size']}", f"engine.batch_size={prod['engine']['batch_size']}",
             f"engine.max_inflight_batches={prod['engine']['max_inflight_batches']}"]
    cfg = config.load(DEMO, ["prompt.use=[caption,sound_events]", "sampling.max_tokens=1", "sampling.min_tokens=0",
                             *sizes], input=manifest, output=out)
    ray.init(address="local", log_to_driver=False, **LOCAL)
    peak = StorePeak()
    peak.start()
    try:
        summary = run(cfg, Job(caption.COLUMN, build), fresh=True)
    finally:
        peak.running = False
        peak.join()
        ray.shutdown()
    assert summary["rows_ok"] == summary["output_rows"], summary
    return {"store_peak_mib": round(peak.peak / 2 ** 20, 1),
            "kb_per_row": {n: round(t["bytes_out"] / t["rows_out"] / 1e3, 1)
                           for n, t in summary["stages"].items() if t["rows_out"] and t["bytes_out"] is not None}}


def audio(windows: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = make_manifest(folder, windows, 30.0)
        before, after = (audio_run(manifest, os.path.join(folder, name), name == "before")
                         for name in ("before", "after"))
    for name, r in (("before", before), ("after", after)):
        print(json.dumps({"run": name, **r}))
    last = list(after["kb_per_row"])[-2]  # the stage that hands rows to the commit
    print(f"RESULT windows={windows} store_peak_ratio={after['store_peak_mib'] / before['store_peak_mib']:.2f} "
          f"{last}_bytes_ratio={after['kb_per_row'][last] / before['kb_per_row'][last]:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs=2, default=[2000, 20000])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--audio", action="store_true", help="where the audio travels: before and after, side by side")
    ap.add_argument("--windows", type=int, default=96)
    a = ap.parse_args()
    if a.audio:
        return audio(a.windows)
    with tempfile.TemporaryDirectory() as folder:
        small, big = (measure(n, a.seconds, folder) for n in a.rows)
    for r in (small, big):
        print(json.dumps(r))
    ratios = {k: round(big[k] / max(small[k], 1), 2) for k in ("driver_mib", "largest_worker_mib", "all_workers_mib")}
    print("RESULT " + " ".join(f"{k.removesuffix('_mib')}_ratio={v}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
