"""Write results as parquet files committed atomically: the last stage of every job.

Each batch becomes one file: written under a dot-name, then renamed (on object stores the upload itself
is atomic), so a file that exists under its final name is complete. What earlier runs committed, and so
what a rerun skips, is the ledger's business (operators/ledger.py); this stage only drops the units of a
half-written input row that are committed already, so of such a row only what is missing is written.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import read
from operators.chat import Chat
from operators.decode import Decode
from operators.generate import Generate
from operators.ledger import DERIVED, INPUT, PART, UNIT
from operators.prompt import Prompt
from operators.stage import Columns, declared, dropped, put

COLUMNS = Columns(writes=("output_id", "model", "sampling", "run_id", "created_at"), records=("run_id", "created_at"))
DROP = declared("working", read.COLUMNS, Decode, Prompt, Chat, Generate)
LEAD = ("output_id", "id", "audio", "prompt_id", "{column}", "error", "warning", "model", "prompt", "duration_s",
        "segment", "segments", "segment_start_s", "segment_end_s", "sampling", "run_id", "created_at")


def audio_text(audio: pa.Array) -> pa.Array:
    """Each row's audio as one string: its uri, or the JSON list of several (rare: per row only there)."""
    audio = audio.combine_chunks() if isinstance(audio, pa.ChunkedArray) else audio
    single = pc.equal(pc.fill_null(pc.list_value_length(audio), 1), 1)
    text = pc.list_element(audio, 0)
    if pc.all(single).as_py():
        return text
    several = [None if a is None or len(a) == 1 else json.dumps(a) for a in audio.to_pylist()]
    return pc.if_else(single, text, pa.array(several, pa.string()))


def finalize(batch: pa.Table, column: str, model: str, sampling: str, run_id: str, created_at: datetime,
             audio_list: bool = False) -> pa.Table:
    """Drop working columns, add provenance, put the columns users query first. `audio` is the list of a
    row's audio uris for question answering (as DataFlow-MM writes it), else the clip's uri."""
    batch = dropped(batch, DROP)
    # (A rewrite's rows have it as text already: their input's.)
    if not audio_list and "audio" in batch.column_names and pa.types.is_list(batch.schema.field("audio").type):
        batch = put(batch, audio=audio_text(batch.column("audio")))
    n = batch.num_rows
    # Unique and stable across runs: the input row's id, the prompt, the window.
    output_id = pc.binary_join_element_wise(batch.column("id"), batch.column("prompt_id"),
                                            pc.cast(batch.column("segment"), pa.string()), "/")
    batch = put(batch, output_id=output_id, model=pa.array([model] * n, pa.string()),
                sampling=pa.array([sampling] * n, pa.string()), run_id=pa.array([run_id] * n, pa.string()),
                created_at=pa.array([created_at] * n, pa.timestamp("us", tz="UTC")))
    lead = [c.format(column=column) for c in LEAD]
    return batch.select([c for c in lead if c in batch.column_names] +
                        [c for c in batch.column_names if c not in lead])


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


def drop_committed(batch: pa.Table, committed: pa.Table) -> pa.Table:
    """`batch` less the rows whose unit (input row, window, prompt) is in `committed`: a semi-join on the
    key columns only (payload columns such as audio need not be joinable)."""
    keys = batch.select(UNIT).append_column("_row", pa.array(np.arange(batch.num_rows)))
    hit = keys.join(committed.select(UNIT), keys=UNIT, join_type="left semi")["_row"].to_numpy()
    mask = np.ones(batch.num_rows, bool)
    mask[hit] = False
    return batch.filter(mask)


def digest(table: pa.Table, derived: bool) -> str:
    """A batch's name: a hash of its rows' keys. Ray runs a task again to rebuild outputs a lost node held,
    and a write task run again must overwrite its own file (same rows, same name), never commit its rows twice."""
    keys = table.select(INPUT if derived else UNIT)
    keys = keys.sort_by([(c, "ascending") for c in keys.column_names])
    return hashlib.sha1(repr(keys.to_pydict()).encode()).hexdigest()[:12]


def write_batch(batch: pa.Table, output: str, run_id: str, committed: pa.Table | None = None,
                derived: bool = False, split_by: str | None = None, **provenance) -> pa.Table:
    """Ray Data UDF: finalize one batch, commit it as one file, return what was written. Rows already
    `committed` (the other windows or prompts of an input row a crash left half written) are dropped. A
    derived job's rows keep their columns (and provenance) as read; the part says how it is keyed. With
    `split_by`, one file per value of that column, named `part-...-<value>.parquet` (the column dropped)."""
    if committed is not None and committed.num_rows:
        batch = drop_committed(batch, committed)
    if batch.num_rows == 0:
        return PROGRESS.empty_table()
    if derived:
        table = dropped(batch, DROP)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **DERIVED})
    else:
        table = finalize(batch, run_id=run_id, **provenance)
    name = f"{PART}{run_id}-{digest(table, derived)}"
    if split_by is None:
        return progress(table, [commit(table, output, f"{name}.parquet")], [table.num_rows])
    files, rows = [], []
    for value in pc.unique(table[split_by]).to_pylist():
        part = table.filter(pc.equal(table[split_by], value)).drop_columns([split_by])
        files.append(commit(part, output, f"{name}-{value}.parquet"))
        rows.append(part.num_rows)
    return progress(table, files, rows)


PROGRESS = pa.schema([("file", pa.string()), ("rows", pa.int64()), ("inputs", pa.float64()), ("errors", pa.string()),
                      ("audio_s", pa.float64()), ("events", pa.string())])
# Warnings that tell of the run rather than of a row (an engine lost and replaced): the driver says each once.
EVENTS = "generate/"


def progress(table: pa.Table, files: list[str], rows: list[int]) -> pa.Table:
    """What the driver learns of a commit, for its progress lines: the files and their rows, and on the first
    file the batch's input rows done (an output row is 1/(windows x prompts) of one, a derived job's row one),
    errors by kind, seconds of audio (each window once) and the distinct EVENTS warnings. A few numbers per
    file, never a row."""
    if not files:
        return PROGRESS.empty_table()
    names = set(table.column_names)
    if "input_row" in names and pa.types.is_list(table.schema.field("input_row").type):
        share = pc.cast(pc.list_value_length(table["input_row"]), pa.float64())  # a rewrite's: the rows it gathered
    elif {"segments", "prompts"} <= names and "input_row" not in names:
        share = pc.divide(1.0, pc.cast(pc.multiply(table["segments"], table["prompts"]), pa.float64()))
    else:
        share = pa.array([1.0] * table.num_rows)
    # A window's audio once, however many prompts asked of it.
    once = (pc.divide(1.0, pc.cast(table["prompts"], pa.float64()))
            if "prompts" in names and "input_row" not in names else pa.array([1.0] * table.num_rows))
    table = table.append_column("_once", once)
    errors = table["error"].drop_null() if "error" in names else pa.array([], pa.string())
    kinds = pc.value_counts(pc.list_element(pc.split_pattern(errors, ":", max_splits=1), 0)).to_pylist()
    ok = table.filter(pc.is_null(table["error"])) if "error" in names else table
    audio = (pc.sum(pc.multiply(pc.subtract(ok["segment_end_s"], ok["segment_start_s"]), ok["_once"])).as_py()
             if {"segment_start_s", "segment_end_s"} <= names else 0.0)
    warned = pc.split_pattern(table["warning"].drop_null(), "; ") if "warning" in names else pa.array([], pa.list_(pa.string()))
    warned = pc.list_flatten(warned)
    events = pc.unique(warned.filter(pc.starts_with(warned, EVENTS))).to_pylist()
    rest = [0.0] * (len(files) - 1)
    return pa.table({"file": files, "rows": rows, "inputs": [pc.sum(share).as_py() or 0.0, *rest],
                     "errors": [json.dumps({k["values"]: k["counts"] for k in kinds}), *["{}"] * len(rest)],
                     "audio_s": [audio or 0.0, *rest], "events": [json.dumps(events), *["[]"] * len(rest)]},
                    schema=PROGRESS)


def apply(ds, cfg, column: str, run_id: str, created_at: datetime, audio_list: bool = False,
          committed: pa.Table | None = None, derived: bool = False, split_by: str | None = None, whole: bool = False):
    """One commit per `write.rows_per_file` rows; `whole`: one per block as it comes (a block's rows together)."""
    sampling = json.dumps(cfg.sampling.model_dump(), sort_keys=True)
    return ds.map_batches(write_batch, fn_kwargs=dict(output=cfg.output, run_id=run_id, column=column,
                                                      model=cfg.model.path if cfg.model else None,
                                                      sampling=sampling, created_at=created_at,
                                                      audio_list=audio_list, committed=committed, derived=derived,
                                                      split_by=split_by),
                          # No CPU reservation: commits must keep pace with the engine even on a box whose cores
                          # the actors hold, or Ray Data defers them to the end and a crash loses everything.
                          batch_size=None if whole else cfg.write.rows_per_file, batch_format="pyarrow", num_cpus=0)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
