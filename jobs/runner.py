"""The one runner every job uses: parse the command line, validate the config, run on Ray, report.

    python -m jobs.<job> --config configs/<job>.yaml [--input URI] [--output URI] [--fresh] [key=value ...]

A job module supplies `build(ds, cfg, spec)`, the stages between reading manifests and writing parquet,
and the name of its output column.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Callable

from operators import config as config_mod
from operators import read, write
from operators.models import spec as model_spec
from operators.stage import LIGHT_CPUS


def parse_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config, e.g. configs/caption.yaml")
    ap.add_argument("--input", help="manifest path, glob or URI (overrides `input`)")
    ap.add_argument("--output", help="output folder or URI (overrides `output`)")
    ap.add_argument("--fresh", action="store_true", help="delete what the output folder holds and start over")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sampling.max_tokens=128")
    return ap.parse_args(argv)


def prepare_output(output: str, fresh: bool) -> None:
    """Refuse to mix two runs in one folder unless --fresh says to clear it."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output)
    if fs.exists(root) and fs.ls(root):
        if not fresh:
            raise config_mod.ConfigError(f"output: {output} is not empty; pass --fresh to replace what it holds, "
                                         "or choose another --output")
        fs.rm(root, recursive=True)


def run(cfg, build: Callable, column: str, fresh: bool = False) -> dict:
    """Run one job to completion and return its summary."""
    import ray

    spec = model_spec(cfg.model.family)
    prepare_output(cfg.output, fresh)
    run_id, started = uuid.uuid4().hex[:12], write.utcnow()
    ray.init(ignore_reinit_error=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    t0 = time.time()
    manifests = read.expand(cfg.input)
    count = ray.remote(num_cpus=LIGHT_CPUS)(read.count_rows)
    rows_in = sum(ray.get([count.remote(m) for m in manifests]))
    ds = build(read.read(manifests), cfg, spec)
    write.write(write.apply(ds, cfg, column, run_id, started), cfg.output)
    wall = time.time() - t0
    return write.summarize(cfg.output, rows_in, {"run_id": run_id, "model": cfg.model.path,
                                                 "wall_s": round(wall, 2)})


def report(summary: dict, output: str, column: str, examples: int = 5) -> None:
    import fsspec
    import pyarrow.dataset as pads

    rate = summary["output_rows"] / summary["wall_s"] if summary["wall_s"] else 0.0
    print(f"rows in {summary['rows_in']}  rows out {summary['rows_out']}  ok {summary['rows_ok']}  "
          f"errors {summary['rows_error']}  {rate:.2f} clips/s  wall {summary['wall_s']:.1f} s")
    for kind, n in summary["errors_by_kind"].items():
        print(f"  {kind}: {n}")
    print(f"output: {output}")
    fs, root = fsspec.core.url_to_fs(output)
    files = sorted(f for f in fs.find(root) if f.endswith(".parquet"))
    if files:
        rows = pads.dataset(files, filesystem=fs).head(examples, columns=["id", "duration_s", column, "error"])
        for r in rows.to_pylist():
            text = r[column] if r["error"] is None else r["error"]
            print(f"  {r['id']:<20} {r['duration_s'] or 0:6.1f}s  {str(text)[:90]}")


def main(build: Callable, column: str, doc: str, argv: list[str] | None = None) -> int:
    args = parse_args(argv, doc)
    try:
        cfg = config_mod.load(args.config, args.overrides, input=args.input, output=args.output)
    except config_mod.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        summary = run(cfg, build, column, fresh=args.fresh)
    except config_mod.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    report(summary, cfg.output, column)
    if summary["rows_out"] != summary["rows_in"]:
        print(f"FAILED: {summary['rows_in']} rows in but {summary['rows_out']} out", file=sys.stderr)
        return 1
    return 0
