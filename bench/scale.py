"""Driver scale: rerun, resume and summary over millions of committed rows, measured side by side in one run.

Synthetic sharded manifests (100k rows a shard) and committed outputs in the real schema (built with the
write stage's own `finalize` and `commit`, 1000 rows a part file, 1 % error rows), then, per size:

  (a) rerun    the caption job over an output where everything is committed (starts no engine)
  (b) resume   the job over an output where the first half of every shard is committed, until its
               `plan:` line (printed as the read tasks are handed to Ray Data)
  (c) summary  the ledger read, the summary and the report alone

Wall time and the driver's peak RSS (VmHWM, polled) for each; 100k rows also on S3 (moto's server on
127.0.0.1) and with the driver of an earlier commit (`--baseline`, default the last commit before the
ledger) for the ratio; and Ray Data's own cost per row: 100k rows whose audio is missing through the whole
job, so every stage is bookkeeping only.

    .venv/bin/python bench/scale.py [--sizes 100000 1000000 10000000] [--work DIR] [--baseline REV|none]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHARD = 100_000
FILE_ROWS = 1000
# What the rows say, in turn: clean captions, a loop, a refusal, a one-word answer (what quality rules flag).
CAPTIONS = ["A dog barks twice while rain falls on a tin roof.", "a dog barks a dog barks a dog barks",
            "Birds chirp and a car passes slowly on a wet road.", "I'm sorry, I cannot listen to audio.", "Rain."]
JOB = ["-m", "jobs.caption", "--config", "configs/caption-demo.yaml", "decode.batch_size=16",
       "engine.batch_size=32", f"write.rows_per_file={FILE_ROWS}"]


def make_manifests(folder: str, rows: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k, first in enumerate(range(0, rows, SHARD)):
        path = os.path.join(folder, f"shard-{k:05d}.jsonl")
        with open(path, "w") as f:
            f.writelines(f'{{"id": "r{i:09d}", "audio": "clips/{i:09d}.wav", "source": "synthetic"}}\n'
                         for i in range(first, min(first + SHARD, rows)))
        paths.append(path)
    return paths


def make_outputs(manifests: list[str], out: str, fraction: float) -> None:
    """Committed parts for the first `fraction` of each shard's rows, as the caption job writes them."""
    from datetime import datetime, timezone

    from operators.write import commit, finalize

    when = datetime(2026, 11, 25, tzinfo=timezone.utc)
    for k, manifest in enumerate(manifests):
        first = k * SHARD
        n = int(sum(1 for _ in open(manifest)) * fraction)
        rows = np.arange(n)
        ids = pa.array([f"r{first + i:09d}" for i in rows])
        uris = pa.array([f"{os.path.dirname(manifest)}/clips/{first + i:09d}.wav" for i in rows])
        failed = rows % 100 == 7
        errors = pa.array([f"decode/missing: {u}: no such file" if bad else None
                           for u, bad in zip(uris.to_pylist(), failed)], pa.string())
        duration = np.where(failed, np.nan, 5.0 + (rows % 25))
        t = pa.table({
            "id": ids, "audio": pa.ListArray.from_arrays(np.arange(n + 1, dtype=np.int32), uris),
            "error": errors, "source_manifest": pa.array([manifest] * n), "source_row": pa.array(rows, pa.int64()),
            "source": pa.array(["synthetic"] * n), "duration_s": pa.array(duration, from_pandas=True),
            "segment": pa.array(np.zeros(n, np.int32)), "segments": pa.array(np.ones(n, np.int32)),
            "segment_start_s": pa.array(np.where(failed, np.nan, 0.0), from_pandas=True),
            "segment_end_s": pa.array(duration, from_pandas=True), "warning": pa.nulls(n, pa.string()),
            "prompt_id": pa.array(["caption"] * n), "prompts": pa.array(np.ones(n, np.int32)),
            "prompt": pa.array(["Describe the audio in detail."] * n),
            "caption": pa.array([None if bad else CAPTIONS[i % len(CAPTIONS)] for i, bad in zip(rows, failed)],
                                pa.string()),
            "prompt_tokens": pa.array(np.where(failed, 0, 180).astype(np.int32)),
            "output_tokens": pa.array(np.where(failed, 0, 12).astype(np.int32)),
        })
        for a in range(0, n, FILE_ROWS):
            part = finalize(t.slice(a, FILE_ROWS), column="caption", model="tiny", sampling="{}",
                            run_id="bench", created_at=when)
            commit(part, out, f"part-bench-{k:05d}-{a // FILE_ROWS:06d}.parquet")


def measure(cmd: list[str], cwd: str = ROOT, env: dict | None = None, stop_at: str | None = None,
            timeout: float = 3600) -> dict:
    """Run `cmd`; wall time and the process's peak RSS; with `stop_at`, kill it when a line starts so."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    peak, stopped, lines = [0], [None], []

    def poll():
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    peak[0] = max(peak[0], next(int(x.split()[1]) for x in f if x.startswith("VmHWM")))
            except (OSError, StopIteration):
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    for line in proc.stdout:
        lines.append(line)
        if stop_at and line.startswith(stop_at) and stopped[0] is None:
            stopped[0] = time.time() - t0
            with open(f"/proc/{proc.pid}/status") as f:
                peak[0] = max(peak[0], next(int(x.split()[1]) for x in f if x.startswith("VmHWM")))
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=timeout)
    watcher.join()
    wall = stopped[0] if stopped[0] is not None else time.time() - t0
    if stop_at is None and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(lines)[-3000:]}")
    if stop_at and stopped[0] is None:
        raise RuntimeError(f"no line starting with {stop_at!r}:\n{''.join(lines)[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_mib": round(peak[0] / 1024), "log": "".join(lines)}


SUMMARY_ONLY = """
import sys, time
sys.path.insert(0, {root!r})
from jobs import report
from operators.ledger import Ledger
ledger = Ledger(sys.argv[1]).update()
summary = {{"rows_in": 0, **ledger.counts("bench"), "run_id": "bench", "wall_s": 0.0, "rows_resumed": 0, "stages": {{}},
           "output_rows_this_run": 0, "output_rows_per_s": 0.0, "column": "caption"}}
ledger.write_summary(summary)
report.draw(ledger, summary)
print("rows_out", summary["rows_out"], "output_rows", summary["output_rows"])
"""


def summary_only(out: str, env: dict | None = None) -> dict:
    return measure([sys.executable, "-c", SUMMARY_ONLY.format(root=ROOT), out], env=env)


def job(manifests: str, out: str, extra: list[str] = (), **kw) -> dict:
    return measure([sys.executable, *JOB, "--input", manifests, "--output", out, *extra], **kw)


def local(work: str, rows: int) -> dict:
    folder = os.path.join(work, f"n{rows}")
    manifests = make_manifests(os.path.join(folder, "manifests"), rows)
    full, half = os.path.join(folder, "full"), os.path.join(folder, "half")
    t0 = time.time()
    make_outputs(manifests, full, 1.0)
    make_outputs(manifests, half, 0.5)
    print(f"  {rows}: made manifests and outputs in {time.time() - t0:.0f} s", flush=True)
    pattern = os.path.join(folder, "manifests", "*.jsonl")
    a = job(pattern, full)
    with open(os.path.join(full, "_summary.json")) as f:
        s = json.load(f)
    assert s["rows_in"] == s["rows_out"] == rows and s["output_rows_this_run"] == 0, s
    b = job(pattern, half, stop_at="plan:")
    assert f"plan: {rows} rows in, {rows // 2} already committed" in b["log"], b["log"][-2000:]
    c = summary_only(full)
    return {"folder": folder, "pattern": pattern, "a": a, "b": b, "c": c}


def s3(work: str, local_run: dict) -> dict:
    """The 100k case on moto's S3 server: manifests and parts uploaded, then rerun and summary."""
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                           "AWS_ENDPOINT_URL_S3")})
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench")
        fs.put(os.path.join(local_run["folder"], "manifests") + "/", "bench/manifests/", recursive=True)
        # The parts name their manifests: rewrite source_manifest to the S3 URIs, as an S3 run writes it.
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        local_prefix = os.path.join(local_run["folder"], "manifests")
        for path in sorted(glob.glob(os.path.join(local_run["folder"], "full", "part-*.parquet"))):
            t = pq.read_table(path)
            i = t.column_names.index("source_manifest")
            t = t.set_column(i, "source_manifest", pc.replace_substring(t["source_manifest"], local_prefix,
                                                                        "s3://bench/manifests"))
            with fs.open(f"bench/out/{os.path.basename(path)}", "wb") as f:
                pq.write_table(t, f)
        a = job("s3://bench/manifests/*.jsonl", "s3://bench/out", [f"storage.endpoint_url={endpoint}"], env=env)
        assert '"rows_out": 100000' in fs.cat("bench/out/_summary.json").decode()
        c = summary_only("s3://bench/out", env=env)
        return {"a": a, "c": c}
    finally:
        server.stop()


def baseline(rev: str, work: str, local_run: dict) -> dict:
    """The rerun of (a) with the driver of an earlier commit, from a git worktree, on the same data."""
    tree = os.path.join(work, "baseline")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, rev], check=True, capture_output=True)
    try:
        out = os.path.join(work, "baseline-out")
        shutil.copytree(os.path.join(local_run["folder"], "full"), out)
        # Its own configs and prompt library (cwd), this tree's built model.
        return job(local_run["pattern"], out, [f"model.path={ROOT}/.cache/models/tiny-qwen2-audio"], cwd=tree)
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=True, capture_output=True)


def overhead(work: str, local_run: dict) -> dict:
    """100k rows whose audio is missing through read, decode, prompt, generate and write: Ray Data's own
    cost per row, from the first commit to the last (the engine's start-up excluded)."""
    from operators.ledger import Ledger

    out = os.path.join(work, "overhead-out")
    r = job(local_run["pattern"], out, ["errors.max_input_error_pct=null"])
    commits = Ledger(out).update().commits()
    span = commits[-1][0] - commits[0][0]
    rows = sum(n for _, n in commits)
    return {**r, "rows": rows, "rows_per_s_steady": round(rows / max(span, 1e-9)), "rows_per_s_wall": round(rows / r["wall_s"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--baseline", default="b79d3da", help="git revision of the driver to compare at 100k, or none")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="earmark-scale-")
    os.makedirs(work, exist_ok=True)
    try:
        runs = {}
        for n in args.sizes:
            runs[n] = local(work, n)
            r = runs[n]
            print(f"{n:>10} rows  (a) rerun {r['a']['wall_s']:7.1f} s {r['a']['peak_mib']:6} MiB   "
                  f"(b) resume-to-plan {r['b']['wall_s']:7.1f} s {r['b']['peak_mib']:6} MiB   "
                  f"(c) summary+report {r['c']['wall_s']:7.1f} s {r['c']['peak_mib']:6} MiB", flush=True)
        sizes = sorted(runs)
        for small, big in zip(sizes, sizes[1:]):
            print(f"time ratio {big}/{small} rows ({big / small:g}x the rows): "
                  + "  ".join(f"({k}) {runs[big][k]['wall_s'] / runs[small][k]['wall_s']:.2f}x" for k in "abc"))
        if 100_000 in runs:
            r = s3(work, runs[100_000])
            print(f"S3 100000 rows  (a) rerun {r['a']['wall_s']:.1f} s {r['a']['peak_mib']} MiB   "
                  f"(c) summary+report {r['c']['wall_s']:.1f} s {r['c']['peak_mib']} MiB", flush=True)
            if args.baseline != "none":
                b = baseline(args.baseline, work, runs[100_000])
                print(f"baseline {args.baseline} 100000 rows (a) rerun {b['wall_s']:.1f} s {b['peak_mib']} MiB; "
                      f"this driver {runs[100_000]['a']['wall_s']:.1f} s: "
                      f"{b['wall_s'] / runs[100_000]['a']['wall_s']:.1f}x faster", flush=True)
            o = overhead(work, runs[100_000])
            print(f"Ray Data overhead: {o['rows']} missing-audio rows through the whole job: "
                  f"{o['rows_per_s_steady']} rows/s first to last commit, {o['rows_per_s_wall']} rows/s over "
                  f"{o['wall_s']:.0f} s wall (engine start included), driver {o['peak_mib']} MiB", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
