"""Write the results as parquet, then the run summary and the `_SUCCESS` marker, last.

Output rows lead with the columns users query (id, audio, result, error, provenance); the input row's
own columns follow unchanged; internal working columns (waveform, rendered prompt) are dropped.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone

import pyarrow as pa

from operators.stage import LIGHT_CPUS, put

DROP = ("waveform", "prompt_text")
LEAD = ("id", "audio", "{column}", "error", "model", "prompt", "duration_s", "segment", "segment_start_s",
        "segment_end_s", "sampling", "run_id", "created_at")
SUMMARY, SUCCESS = "_summary.json", "_SUCCESS"


def finalize(batch: pa.Table, column: str, model: str, sampling: str, run_id: str, created_at: datetime) -> pa.Table:
    batch = batch.drop_columns([c for c in DROP if c in batch.column_names])
    n = batch.num_rows
    batch = put(batch, model=pa.array([model] * n, pa.string()), sampling=pa.array([sampling] * n, pa.string()),
                run_id=pa.array([run_id] * n, pa.string()),
                created_at=pa.array([created_at] * n, pa.timestamp("us", tz="UTC")))
    lead = [c.format(column=column) for c in LEAD]
    return batch.select([c for c in lead if c in batch.column_names] +
                        [c for c in batch.column_names if c not in lead])


def apply(ds, cfg, column: str, run_id: str, created_at: datetime):
    sampling = json.dumps(cfg.sampling.model_dump(), sort_keys=True)
    return ds.map_batches(finalize, fn_kwargs=dict(column=column, model=cfg.model.path, sampling=sampling,
                                                   run_id=run_id, created_at=created_at),
                          batch_format="pyarrow", num_cpus=LIGHT_CPUS)


def write(ds, output: str) -> None:
    ds.write_parquet(output, ray_remote_args={"num_cpus": LIGHT_CPUS})


def error_kind(error: str) -> str:
    """'decode/missing: file: reason' -> 'decode/missing'."""
    return error.split(":", 1)[0]


def summarize(output: str, rows_in: int, extra: dict) -> dict:
    """Count what was committed to `output` and write the summary and `_SUCCESS`, in that order."""
    import fsspec
    import pyarrow.dataset as pads

    fs, root = fsspec.core.url_to_fs(output)
    files = [f for f in fs.find(root) if f.endswith(".parquet")]
    table = pads.dataset(files, filesystem=fs, format="parquet").to_table(
        columns=["source_manifest", "source_row", "error"]) if files else None
    errs = table.column("error").to_pylist() if table is not None else []
    sources = set(zip(table.column("source_manifest").to_pylist(), table.column("source_row").to_pylist())) \
        if table is not None else set()
    kinds = Counter(error_kind(e) for e in errs if e)
    summary = {
        "rows_in": rows_in,
        "rows_out": len(sources),
        "output_rows": len(errs),
        "rows_ok": sum(e is None for e in errs),
        "rows_error": sum(kinds.values()),
        "errors_by_kind": dict(sorted(kinds.items())),
        "files": len(files),
        **extra,
    }
    with fs.open(f"{root}/{SUMMARY}", "w") as f:
        json.dump(summary, f, indent=2)
    fs.touch(f"{root}/{SUCCESS}")
    return summary


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
