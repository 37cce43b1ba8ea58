"""Write results as parquet files committed atomically, find what earlier runs committed, and summarize.

Each batch becomes one file: written under a dot-name, then renamed (on object stores the upload itself
is atomic), so a file that exists under its final name is complete. A rerun reads the committed files'
`(source_manifest, source_row, segment, prompt_id)` keys, deletes leftovers of a killed run, skips every input
row whose windows and prompts are all committed, and of a half-written row writes only what is missing:
nothing lost, nothing twice. `_summary.json` and `_SUCCESS` come last.
"""
from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pyarrow as pa

from operators.stage import put

DROP = ("waveform", "prompt_text", "audio_bytes", "audio_uris", "chat")
LEAD = ("output_id", "id", "audio", "prompt_id", "{column}", "error", "warning", "model", "prompt", "duration_s",
        "segment", "segments", "segment_start_s", "segment_end_s", "sampling", "run_id", "created_at")
# What identifies an output row: an input row's window, asked one prompt; with the counts that say when
# an input row is complete.
KEYS = ["source_manifest", "source_row", "segment", "segments", "prompt_id", "prompts"]
SUMMARY, SUCCESS, PART = "_summary.json", "_SUCCESS", "part-"


def audio_text(audio: list[str] | None) -> str | None:
    """A row's audio as one string: its uri, or the JSON list of several."""
    if audio is None:
        return None
    return audio[0] if len(audio) == 1 else json.dumps(audio)


def finalize(batch: pa.Table, column: str, model: str, sampling: str, run_id: str, created_at: datetime,
             audio_list: bool = False) -> pa.Table:
    """Drop working columns, add provenance, put the columns users query first. `audio` is the list of a
    row's audio uris for question answering (as DataFlow-MM writes it), else the clip's uri."""
    batch = batch.drop_columns([c for c in DROP if c in batch.column_names])
    if not audio_list and "audio" in batch.column_names:
        batch = put(batch, audio=pa.array([audio_text(a) for a in batch.column("audio").to_pylist()], pa.string()))
    n = batch.num_rows
    # Unique and stable across runs: the input row's id, the prompt, the window.
    output_id = [f"{i}/{p}/{s}" for i, p, s in zip(*(batch.column(c).to_pylist() for c in ("id", "prompt_id",
                                                                                              "segment")))]
    batch = put(batch, output_id=pa.array(output_id, pa.string()), model=pa.array([model] * n, pa.string()), sampling=pa.array([sampling] * n, pa.string()),
                run_id=pa.array([run_id] * n, pa.string()),
                created_at=pa.array([created_at] * n, pa.timestamp("us", tz="UTC")))
    lead = [c.format(column=column) for c in LEAD]
    return batch.select([c for c in lead if c in batch.column_names] +
                        [c for c in batch.column_names if c not in lead])


def output_fs(output: str):
    """(filesystem, root) of the output, with cached listings dropped.

    fsspec shares one filesystem object per process and s3fs caches listings in it: a listing taken before
    this run committed its files would hide them from the summary and from a resume.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(output)
    fs.invalidate_cache()
    return fs, root


def commit(table: pa.Table, output: str, name: str) -> str:
    """Write `table` to output/name so that the name only ever holds a complete file."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(output)
    final, tmp = f"{root}/{name}", f"{root}/.{name}.tmp"
    fs.makedirs(root, exist_ok=True)
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    fs.mv(tmp, final)
    return final


def unit(m: str, r: int, s: int, p: str) -> str:
    return f"{m}#{r}#{s}#{p}"


def write_batch(batch: pa.Table, output: str, run_id: str, committed: frozenset = frozenset(),
                **provenance) -> pa.Table:
    """Ray Data UDF: finalize one batch, commit it as one file, return what was written. Rows already
    `committed` (the other windows or prompts of an input row a crash left half written) are dropped."""
    if committed:
        keys = zip(*(batch.column(c).to_pylist() for c in ("source_manifest", "source_row", "segment", "prompt_id")))
        batch = batch.filter(pa.array([unit(*k) not in committed for k in keys]))
    if batch.num_rows == 0:
        return pa.table({"file": pa.array([], pa.string()), "rows": pa.array([], pa.int64())})
    table = finalize(batch, run_id=run_id, **provenance)
    path = commit(table, output, f"{PART}{run_id}-{uuid.uuid4().hex[:12]}.parquet")
    return pa.table({"file": [path], "rows": [table.num_rows]})


def apply(ds, cfg, column: str, run_id: str, created_at: datetime, audio_list: bool = False,
          committed: frozenset = frozenset()):
    sampling = json.dumps(cfg.sampling.model_dump(), sort_keys=True)
    return ds.map_batches(write_batch, fn_kwargs=dict(output=cfg.output, run_id=run_id, column=column,
                                                      model=cfg.model.path, sampling=sampling,
                                                      created_at=created_at, audio_list=audio_list,
                                                      committed=committed),
                          # No CPU reservation: commits must keep pace with the engine even on a box whose cores
                          # the actors hold, or Ray Data defers them to the end and a crash loses everything.
                          batch_size=cfg.write.rows_per_file, batch_format="pyarrow", num_cpus=0)


def committed(output: str, columns: list[str] = KEYS) -> tuple[pa.Table | None, list[str]]:
    """The given columns of every committed part file, after deleting a killed run's leftovers."""
    import pyarrow.parquet as pq

    fs, root = output_fs(output)
    if not fs.exists(root):
        return None, []
    tables, files = [], []
    for path in sorted(fs.find(root)):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(".") and name.endswith(".tmp"):
            fs.rm(path)  # an interrupted write
        elif name.startswith(PART) and name.endswith(".parquet"):
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
            files.append(path)
    return (pa.concat_tables(tables, promote_options="default") if tables else None), files


def resume(table: pa.Table | None) -> tuple[dict[str, list[int]], frozenset]:
    """What a rerun skips: the input rows whose every window and prompt is committed, and the committed
    units of the rest (a commit holds a fixed number of rows, so an input row can end up half written)."""
    done = done_rows(table)
    if table is None:
        return done, frozenset()
    keys = zip(*(table.column(c).to_pylist() for c in ("source_manifest", "source_row", "segment", "prompt_id")))
    complete = {(m, r) for m, rs in done.items() for r in rs}
    return done, frozenset(unit(m, r, s, p) for m, r, s, p in keys if (m, r) not in complete)


def done_rows(table: pa.Table | None) -> dict[str, list[int]]:
    """Input rows per manifest whose every window and prompt is committed."""
    if table is None:
        return {}
    seen: dict[tuple[str, int], set[tuple[int, str]]] = defaultdict(set)
    total: dict[tuple[str, int], int] = {}
    for m, r, s, n, p, k in zip(*(table.column(c).to_pylist() for c in KEYS)):
        seen[(m, r)].add((s, p))
        total[(m, r)] = n * k
    out: dict[str, list[int]] = defaultdict(list)
    for (m, r), segs in seen.items():
        if len(segs) == total[(m, r)]:
            out[m].append(r)
    return {m: sorted(rows) for m, rows in out.items()}


def error_kind(error: str) -> str:
    """'decode/missing: file: reason' -> 'decode/missing'."""
    return error.split(":", 1)[0]


def summarize(output: str, rows_in: int, extra: dict) -> dict:
    """Count what is committed in `output` and write `_summary.json`."""
    cols = KEYS + ["error", "segment_start_s", "segment_end_s", "prompt_tokens", "output_tokens", "run_id"]
    table, files = committed(output, cols)
    rows = table.to_pylist() if table is not None else []
    keys = Counter((r["source_manifest"], r["source_row"], r["segment"], r["prompt_id"]) for r in rows)
    kinds = Counter(error_kind(r["error"]) for r in rows if r["error"])
    ok = [r for r in rows if r["error"] is None]
    summary = {
        "rows_in": rows_in,
        "rows_out": sum(len(rs) for rs in done_rows(table).values()),
        "output_rows": len(rows),
        "duplicate_rows": sum(n - 1 for n in keys.values() if n > 1),
        "rows_ok": len(ok),
        "rows_error": sum(kinds.values()),
        "errors_by_kind": dict(sorted(kinds.items())),
        # Each window once, however many prompts it was asked.
        "audio_hours": round(sum({(r["source_manifest"], r["source_row"], r["segment"]):
                                  r["segment_end_s"] - r["segment_start_s"] for r in ok}.values()) / 3600, 6),
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in ok),
        "output_tokens": sum(r["output_tokens"] or 0 for r in ok),
        "files": len(files),
        **extra,
    }
    if summary.get("wall_s"):  # this run's tokens only: a resume's earlier rows took no time now
        this_run = sum(r["output_tokens"] or 0 for r in ok if r["run_id"] == summary.get("run_id"))
        summary["output_tokens_per_s"] = round(this_run / summary["wall_s"], 2)
    fs, root = output_fs(output)
    with fs.open(f"{root}/{SUMMARY}", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def mark_success(output: str) -> None:
    """Written last: the output is complete."""
    fs, root = output_fs(output)
    fs.touch(f"{root}/{SUCCESS}")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
