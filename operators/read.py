"""Read manifests (jsonl or parquet; local paths, globs, lists, or any fsspec URI), one row per manifest row:
its audio items (paths, URIs or inline bytes) and, for question answering, its conversation as chat messages.

The driver lists manifest files and indexes each once in its reader threads (row counts and where each
chunk of rows starts: arrays, never rows), then Ray read tasks parse one chunk each, so a large manifest never sits in the driver and
its rows flow through the pipeline in small blocks. A line that is not JSON, lacks audio or holds a
conversation that cannot be answered becomes an error row instead of failing the read.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Iterator

import numpy as np
import pyarrow as pa

from operators import conversation
from operators.ledger import INPUT
from operators.stage import Columns, put

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
# Besides the manifest's own columns (`id` and `audio` as it names them): the audio to fetch, a conversation
# as text, and where the row came from.
COLUMNS = Columns(writes=("audio_uris", "audio_bytes", "chat", "error", "source_manifest", "source_row"),
                  working=("audio_uris", "audio_bytes", "chat"))


def expand(spec: str | list[str]) -> list[str]:
    """Manifest URIs for a path, glob or list of them, sorted so every run sees one order. A folder is a
    job's output: its committed part files are the manifests (jobs.quality, jobs.export read them)."""
    import fsspec

    from operators.ledger import PART

    out: list[str] = []
    for item in [spec] if isinstance(spec, str) else spec:
        fs, path = fsspec.core.url_to_fs(item)
        if fsspec.core.has_magic(path):
            paths = fs.glob(path)
        elif fs.isdir(path):
            paths = fs.glob(f"{path.rstrip('/')}/{PART}*.parquet")
        else:
            paths = [path] if fs.exists(path) else []
        proto = item.split("://", 1)[0] + "://" if "://" in item else ""
        out += [proto + p if proto else p for p in sorted(paths) if not fs.isdir(p)]
    for uri in out:
        if format_of(uri) is None:
            raise ValueError(f"{uri}: unsupported manifest format; use {', '.join(FORMATS)}")
    return out


def format_of(uri: str) -> str | None:
    return FORMATS.get(posixpath.splitext(uri)[1].lower())


def derive_id(manifest: str, row: int) -> str:
    """Stable id for a row without one: the same manifest URI and position always give the same id."""
    return hashlib.sha1(f"{manifest}#{row}".encode()).hexdigest()[:16]


def resolve(audio: str, manifest: str) -> str:
    """Audio paths relative to the manifest resolve against the manifest's folder (portable bundles)."""
    if "://" in audio or audio.startswith("/"):
        return audio
    proto, sep, path = manifest.rpartition("://")
    folder = posixpath.dirname(path) or "."
    return f"{proto}{sep}{posixpath.normpath(posixpath.join(folder, audio))}"


class BadAudio(ValueError):
    pass


def _audio(ref, manifest: str, where: str) -> tuple[str, bytes | None]:
    """(uri, inline bytes) of one audio reference: a path/URI, raw bytes, or the HF datasets Audio struct."""
    if isinstance(ref, dict):  # the Hugging Face datasets Audio struct: {"bytes": ..., "path": ...}
        data, path = ref.get("bytes"), ref.get("path")
        if data is not None:
            return path or where, data  # provenance for inline audio without a path
        ref = path
    if isinstance(ref, bytes):
        return where, ref
    if ref == "":
        raise BadAudio("'audio' is an empty string")
    if not isinstance(ref, str):
        raise BadAudio("'audio' must be a path, a list of paths or an {bytes, path} struct")
    return resolve(ref, manifest), None


def _items(rec: dict, manifest: str, where: str) -> tuple[list[str], list, str | None]:
    """(audio uris, inline bytes, chat messages as JSON) of one manifest row."""
    audio, messages = rec.get("audio"), None
    if "messages" in rec:
        messages, refs = conversation.from_messages(rec["messages"])
    else:
        refs = audio if isinstance(audio, list) else [] if audio is None else [audio]
        if "conversation" in rec:
            messages = conversation.from_dataflow(rec["conversation"], refs)
    if not refs:
        raise LookupError("row has no 'audio' path" + (" and its messages no audio item" if messages else ""))
    items = [_audio(ref, manifest, f"{where}/{k}" if len(refs) > 1 else where) for k, ref in enumerate(refs)]
    chat = json.dumps(conversation.check(messages)) if messages is not None else None
    return [u for u, _ in items], [b for _, b in items], chat


def _row(manifest: str, index: int, rec: object, error: str | None = None) -> dict:
    where = f"{manifest}:{index + 1}"
    if error is None and not isinstance(rec, dict):
        error = f"read/bad_row: {where}: expected a JSON object, got {type(rec).__name__}"
    rec = rec if isinstance(rec, dict) and error is None else {}
    uris, inline, chat = None, None, None
    if error is None:
        try:
            uris, inline, chat = _items(rec, manifest, f"{manifest}#{index}")
        except LookupError as e:
            error = f"read/no_audio: {where}: {e}"
        except BadAudio as e:
            error = f"read/bad_audio: {where}: {e}"
        except conversation.ConversationError as e:
            error = f"read/bad_conversation: {where}: {e}"
    rid = rec.get("id")
    return {
        **rec,
        "id": str(rid) if rid is not None else derive_id(manifest, index),
        # The resolved uris; on a row that failed, what it named, for the error row's provenance.
        "audio": uris if uris is not None else [rec["audio"]] if isinstance(rec.get("audio"), str) else None,
        "audio_uris": uris,
        "audio_bytes": inline,
        "chat": chat,
        "error": error,
        "source_manifest": manifest,
        "source_row": index,
    }


def _jsonl_rows(manifest: str, f, start: int, stop: int, skip: set[int]) -> Iterator[dict]:
    """Lines start..stop of a jsonl file already positioned at line `start`; positions are line numbers."""
    for i in range(start, stop):
        raw = f.readline()
        if i in skip or not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError as e:  # also bad UTF-8
            yield _row(manifest, i, None, f"read/bad_json: {manifest}:{i + 1}: {e}")
            continue
        yield _row(manifest, i, rec)


def _parquet_rows(manifest: str, f, start: int, stop: int, skip: set[int]) -> Iterator[dict]:
    """Rows start..stop of a parquet file, reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    first = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first < stop and first + n > start:
            for k, rec in enumerate(pf.read_row_group(g).to_pylist()):
                index = first + k
                if start <= index < stop and index not in skip:
                    yield _row(manifest, index, rec)
        first += n


# The columns this stage makes, typed: every block has one schema whatever its rows hold.
TYPES = {"id": pa.string(), "audio": pa.list_(pa.string()), "audio_uris": pa.list_(pa.string()),
         "audio_bytes": pa.list_(pa.binary()), "chat": pa.string(), "error": pa.string(),
         "source_manifest": pa.string(), "source_row": pa.int64()}


def _column(values: list) -> pa.Array:
    """A pass-through column. Nested values (conversations, metadata) become JSON text, and so do
    columns whose rows mix types: each block must have one schema, and all blocks the same one."""
    if any(isinstance(v, (dict, list)) for v in values):
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())


def to_table(rows: list[dict]) -> pa.Table:
    """Rows with differing keys -> one table over the union of keys (missing values are null)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.table({k: pa.array([r.get(k) for r in rows], TYPES[k]) if k in TYPES else
                     _column([r.get(k) for r in rows]) for k in keys})


def read_rows(manifest: str, start: int, stop: int, skip: set[int]) -> pa.Table | None:
    """Rows start..stop of a job's output part, as they are (nested columns stay nested), with INPUT columns:
    a derived job (quality, export) keeps every column of the rows it reads."""
    import fsspec
    import numpy as np
    import pyarrow.parquet as pq

    tables, first = [], 0
    with fsspec.open(manifest, "rb") as f:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first < stop and first + n > start:
                rows = np.arange(first, first + n)
                keep = (rows >= start) & (rows < stop) & ~np.isin(rows, list(skip))
                t = pf.read_row_group(g).filter(pa.array(keep))
                # Replaced where the part is itself a derived job's (quality, then export).
                tables.append(put(t, **{INPUT[0]: pa.array([manifest] * t.num_rows, pa.string()),
                                        INPUT[1]: pa.array(rows[keep], pa.int64())}))
            first += n
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def read_chunk(manifest: str, start: int, stop: int, offset: int = 0, skip: set[int] = frozenset()) -> pa.Table | None:
    """Rows at positions start..stop of one manifest (jsonl: from byte `offset`), leaving out `skip`."""
    import fsspec

    with fsspec.open(manifest, "rb") as f:
        if format_of(manifest) == "jsonl":
            f.seek(offset)
            rows = list(_jsonl_rows(manifest, f, start, stop, skip))
        else:
            rows = list(_parquet_rows(manifest, f, start, stop, skip))
    return to_table(rows) if rows else None


# Bytes that `bytes.strip()` removes: a line of only these is blank and holds no row.
_SPACE = np.zeros(256, bool)
_SPACE[[9, 10, 11, 12, 13, 32]] = True
BLOCK = 8 << 20  # bytes of a jsonl manifest scanned at once by `index`


def _scan(buf: bytes, first_line: int, base: int, grain: int, offsets: list, nonblank: list) -> int:
    """Lines of `buf` (whole lines, starting at byte `base` and line `first_line`): the byte offset of every
    grain-th line and whether each line holds anything; returns the number of lines."""
    arr = np.frombuffer(buf, np.uint8)
    ends = np.flatnonzero(arr == 10) + 1
    if not len(ends) or ends[-1] != len(arr):
        ends = np.r_[ends, len(arr)]  # the file's last line without a newline
    starts = np.r_[0, ends[:-1]]
    filled = np.r_[0, np.cumsum(~_SPACE[arr], dtype=np.int64)]
    nonblank.append(filled[ends] > filled[starts])
    lines = first_line + np.arange(len(ends))
    offsets.append(base + starts[lines % grain == 0])
    return len(ends)


def index(manifest: str, grain: int) -> dict:
    """One pass over a manifest (in one of the driver's reader threads): its line count, the byte offset of
    every `grain`-th line and the number of rows (non-blank lines) in each run of `grain` lines, as numpy
    arrays. The driver groups grains into read chunks of any multiple of `grain` without reading again.

    A jsonl manifest is scanned in blocks with numpy, not line by line: millions of rows index in seconds."""
    import fsspec

    if format_of(manifest) == "parquet":
        import pyarrow.parquet as pq

        with fsspec.open(manifest, "rb") as f:
            n = pq.ParquetFile(f).metadata.num_rows
        starts = np.arange(0, n, grain)
        return {"manifest": manifest, "lines": n, "offsets": np.zeros(len(starts), np.int64),
                "rows": np.minimum(grain, n - starts).astype(np.int64)}
    offsets, nonblank, lines, base, carry = [], [], 0, 0, b""
    with fsspec.open(manifest, "rb") as f:
        while True:
            block = f.read(BLOCK)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if cut:
                lines += _scan(data[:cut], lines, base, grain, offsets, nonblank)
                base += cut
            carry = data[cut:]
            if not block:
                break
    flags = np.concatenate(nonblank) if nonblank else np.zeros(0, bool)
    return {"manifest": manifest, "lines": lines,
            "offsets": np.concatenate(offsets) if offsets else np.zeros(0, np.int64),
            "rows": np.add.reduceat(flags, np.arange(0, lines, grain)).astype(np.int64) if lines else
            np.zeros(0, np.int64)}


CHUNK = pa.schema([("manifest", pa.string()), ("start", pa.int64()), ("stop", pa.int64()),
                   ("offset", pa.int64()), ("rows", pa.int64()), ("done", pa.list_(pa.int64()))])


def chunks_of(idx: dict, grain: int, grains: int, done: np.ndarray) -> pa.Table:
    """Read chunks of `grains` x `grain` lines of one indexed manifest, less those whose rows are all
    `done`; each chunk lists its done rows, which the read task skips. Vectorized: no object per row."""
    first = np.arange(0, len(idx["rows"]), grains)
    start = first * grain
    stop = np.minimum(start + grains * grain, idx["lines"])
    rows = np.add.reduceat(idx["rows"], first) if len(first) else np.zeros(0, np.int64)
    lo, hi = np.searchsorted(done, start), np.searchsorted(done, stop)
    todo = (hi - lo) < rows
    lo, hi = lo[todo], hi[todo]
    lengths = hi - lo
    taken = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi) if b > a]) if lengths.any() else np.zeros(0, int)
    return pa.table({"manifest": pa.array([idx["manifest"]] * int(todo.sum()), pa.string()),
                     "start": start[todo], "stop": stop[todo], "offset": idx["offsets"][first][todo],
                     "rows": rows[todo],
                     "done": pa.ListArray.from_arrays(np.r_[0, np.cumsum(lengths)], pa.array(done[taken], pa.int64()))},
                    schema=CHUNK)


def plan(manifests: list[str], grain: int, blocks: int, max_rows: int,
         done: dict[str, np.ndarray]) -> tuple[pa.Table, int, int]:
    """Read tasks for the manifests, less what is done: (chunks, rows in, rows per chunk).

    Manifests are indexed in driver threads, READERS at once, as the ledger reads parts: the work is I/O (a
    parquet footer, a jsonl scanned by numpy without the GIL), and Ray tasks would start and import worker
    processes for it, seconds on a small box before any real work. Chunks hold about rows_in / `blocks` rows, between
    `grain` and `max_rows`: enough blocks to keep every decode actor busy, few enough that Ray's per-task
    overhead stays bounded at millions of rows (10M rows in 16-row chunks would be 625k tasks)."""
    from concurrent.futures import ThreadPoolExecutor

    from operators.ledger import READERS

    with ThreadPoolExecutor(READERS) as pool:
        indexed = list(pool.map(lambda m: index(m, grain), manifests))
    rows_in = int(sum(int(i["rows"].sum()) for i in indexed))
    target = min(max(-(-rows_in // max(blocks, 1)), grain), max(max_rows, grain))
    grains = max(target // grain, 1)
    empty = np.zeros(0, np.int64)
    tables = [chunks_of(i, grain, grains, np.asarray(done.get(i["manifest"], empty), np.int64)) for i in indexed]
    return (pa.concat_tables(tables) if tables else CHUNK.empty_table()), rows_in, grains * grain


def read_batches(batch: pa.Table, derived: bool = False) -> Iterator[pa.Table]:
    """Ray Data UDF: chunk descriptions in, their manifest rows (or a job output's rows) out."""
    for c in batch.to_pylist():
        if derived:
            table = read_rows(c["manifest"], c["start"], c["stop"], set(c["done"]))
        else:
            table = read_chunk(c["manifest"], c["start"], c["stop"], c["offset"], set(c["done"]))
        if table is not None:
            yield table


def read(chunks: pa.Table, concurrency: int, derived: bool = False):
    """The manifest rows of the planned chunks as a Ray Dataset, one block per chunk (a bounded number:
    see `plan`); with `derived`, the rows of a job output's parts as they are.

    Read tasks reserve no CPU and at most `concurrency` run at once: they are brief, and on a box whose
    cores the actor pools hold, a reservation would keep them from ever starting."""
    import ray

    # One block per chunk, straight from Arrow: the done rows the chunks carry never become Python objects here.
    # `take`, not `slice`: a slice would ship its parent's whole buffers with every block.
    return ray.data.from_arrow([chunks.take([i]) for i in range(chunks.num_rows)]).map_batches(
        read_batches, fn_kwargs={"derived": derived}, batch_size=1, batch_format="pyarrow", num_cpus=0,
        concurrency=concurrency)
