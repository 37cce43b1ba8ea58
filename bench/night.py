"""The second night's cost beside the first's, measured side by side in one run (one Ray instance, started
before any timing, so its start-up is in neither).

  (a) real engine: night 1 over N clips with copies (configs/night-demo.yaml: dedup -> caption -> quality ->
      export on the tiny model), night 2 over the same manifest plus a shard of 10 % new clips (and copies).
      Per step the rows it did on night 2 (must equal the new rows), the engine requests on night 2, and
      each night's wall time less one engine start-up (measured here: a caption run whose only row is
      missing starts the engine and generates nothing).
  (b) bookkeeping alone: the same at ROWS rows whose audio is missing (every row an error row: no fetch,
      no engine request), night 2 with 10 % new rows; dedup alone, and caption -> quality -> export.
      Target: night 2 <= 0.25x night 1.

    .venv/bin/python bench/night.py [--clips 40] [--rows 100000] [--work DIR] [--parts real,dedup,generate]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

SHARD = 10_000


def timed(argv: list[str]) -> float:
    from jobs import night

    t0 = time.time()
    code = night.main(argv)
    assert code == 0, f"night failed ({code}): {argv}"
    return time.time() - t0


def recipe(path: str, steps: list[str]) -> str:
    demo = {"dedup": "configs/dedup-demo.yaml", "caption": "configs/caption-demo.yaml",
            "quality": "configs/quality-demo.yaml", "export": "configs/export.yaml"}
    with open(path, "w") as f:
        json.dump({"steps": [{"name": s, "job": s, "config": demo[s]} for s in steps]}, f)
    return path


def engine_startup(work: str) -> float:
    """Seconds a caption step spends starting its engine: a run whose one row is missing generates nothing."""
    from jobs import caption, runner
    from operators import config as config_mod

    manifest = os.path.join(work, "one.jsonl")
    with open(manifest, "w") as f:
        f.write('{"id": "gone", "audio": "gone.wav"}\n')
    cfg = config_mod.load("configs/caption-demo.yaml", [], input=manifest, output=os.path.join(work, "startup"))
    return runner.run(cfg, caption.JOB, fresh=True)["wall_s"]


def per_step(root: str) -> list[tuple[str, int, int]]:
    """(step, input rows, output rows) of the last night, from the record."""
    from jobs import night

    with open(os.path.join(root, night.RECORD)) as f:
        nights = json.load(f)["nights"]
    before = nights[-2] if len(nights) > 1 else None
    return [(s["name"], night.new(s, before, "rows_out"), night.new(s, before, "output_rows")) for s in nights[-1]["steps"]]


def real(work: str, clips: int, startup: float) -> None:
    import pyarrow.parquet as pq

    from tools.assets import corpus

    rows = corpus(os.path.join(work, "audio"), clips, seed=7, copies=(1, 2), seconds=(3.0, 8.0))
    new_groups = set(range(clips - max(clips // 10, 1), clips))
    folder = os.path.join(work, "in")
    os.makedirs(folder, exist_ok=True)
    for name, shard in (("shard-1.jsonl", [r for r in rows if r["group"] not in new_groups]),
                        ("shard-2.jsonl", [r for r in rows if r["group"] in new_groups])):
        with open(os.path.join(folder, name + ".later"), "w") as f:
            f.writelines(json.dumps({"id": r["id"], "audio": r["audio"]}) + "\n" for r in shard)
    root = os.path.join(work, "night")
    argv = ["--config", "configs/night-demo.yaml", "--input", os.path.join(folder, "*.jsonl"), "--output", root,
            "dedup.dedup.exclude=[]"]
    walls = []
    for k, name in enumerate(("shard-1.jsonl", "shard-2.jsonl")):
        os.rename(os.path.join(folder, name + ".later"), os.path.join(folder, name))
        walls.append(timed(argv + (["--fresh"] if k == 0 else [])))
        print(f"(a) night {k + 1}: " + ", ".join(f"{s} {i} in / {o} out" for s, i, o in per_step(root)), flush=True)
    new_rows = sum(r["group"] in new_groups for r in rows)
    captions = pq.read_table(os.path.join(root, "caption"), columns=["id", "run_id"]).to_pylist()
    first = {r["run_id"] for r in captions if not any(r["id"] == f"o{g:05d}" for g in new_groups)}
    requests = sum(r["run_id"] not in first for r in captions)
    print(f"(a) {clips} clips with copies: {len(rows)} rows; night 2 adds {new_rows} rows ({len(new_groups)} new "
          f"clips): engine requests on night 2 {requests} (new kept clips {len(new_groups)})")
    print(f"(a) wall less one engine start-up ({startup:.1f} s): night 1 {walls[0] - startup:.1f} s, night 2 "
          f"{walls[1] - startup:.1f} s: {(walls[1] - startup) / (walls[0] - startup):.2f}x")


RECIPES = {"dedup": ["dedup"], "generate": ["caption", "quality", "export"]}


def bookkeeping(work: str, rows: int, startup: float, recipes: list[str]) -> None:
    folder = os.path.join(work, "missing")
    os.makedirs(folder, exist_ok=True)
    shards = -(-rows // SHARD)
    for k in range(shards + max(shards // 10, 1)):
        with open(os.path.join(folder, f"shard-{k:05d}.jsonl" + (".later" if k >= shards else "")), "w") as f:
            f.writelines(f'{{"id": "r{k:03d}-{i:06d}", "audio": "clips/{k}-{i}.wav"}}\n' for i in range(SHARD))
    for steps in (RECIPES[r] for r in recipes):
        engine = startup if "caption" in steps else 0.0
        root = os.path.join(work, "-".join(steps))
        argv = ["--config", recipe(os.path.join(work, f"{steps[0]}.json"), steps), "--input",
                os.path.join(folder, "*.jsonl"), "--output", root, *(["dedup.dedup.exclude=[]"] if "dedup" in steps else []),
                *(f"{s}.write.rows_per_file=1000" for s in steps), *(f"{s}.decode.batch_size=100" for s in steps)]
        one = timed(argv + ["--fresh"])
        print(f"(b) {' -> '.join(steps)} night 1: " + ", ".join(f"{s} {i} in / {o} out" for s, i, o in per_step(root)),
              flush=True)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".later"):
                os.rename(os.path.join(folder, name), os.path.join(folder, name.removesuffix(".later")))
        two = timed(argv)
        print(f"(b) {' -> '.join(steps)} night 2: " + ", ".join(f"{s} {i} in / {o} out" for s, i, o in per_step(root)))
        print(f"(b) {' -> '.join(steps)}: night 1 {one - engine:.1f} s, night 2 {two - engine:.1f} s "
              f"(less {engine:.1f} s of engine start-up): {(two - engine) / (one - engine):.2f}x (target <= 0.25x)",
              flush=True)
        for name in os.listdir(folder):  # night 1 again for the next recipe
            if int(name[6:11]) >= shards:
                os.rename(os.path.join(folder, name), os.path.join(folder, name + ".later"))


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--work", default=None)
    ap.add_argument("--parts", default="real,dedup,generate",
                    help="which to run: real (a), dedup and generate (b: dedup alone, caption -> quality -> export)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    work = args.work or tempfile.mkdtemp(prefix="bench-night-")
    os.makedirs(work, exist_ok=True)
    from jobs.runner import LOCAL

    ray.init(address="local", log_to_driver=False, **LOCAL)  # the instance a job starts
    startup = engine_startup(work) if {"real", "generate"} & set(parts) else 0.0
    print(f"engine start-up: {startup:.1f} s", flush=True)
    if "real" in parts:
        real(work, args.clips, startup)
    bookkeeping(work, args.rows, startup, [p for p in parts if p in RECIPES])


if __name__ == "__main__":
    main()
