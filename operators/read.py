"""Read manifests (jsonl or parquet; local paths, globs, lists, or any fsspec URI), one row per manifest row:
its audio items (paths, URIs or inline bytes) and, for question answering, its conversation as chat messages.

The driver only lists manifest files. Ray tasks index each file once (row counts and where each chunk
of rows starts), then read tasks parse one chunk each, so a large manifest never sits in the driver and
its rows flow through the pipeline in small blocks. A line that is not JSON, lacks audio or holds a
conversation that cannot be answered becomes an error row instead of failing the read.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Iterator

import pyarrow as pa

from operators import conversation
from operators.stage import LIGHT_CPUS

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
WRITES = ("id", "audio", "audio_uris", "audio_bytes", "chat", "error", "source_manifest", "source_row")


def expand(spec: str | list[str]) -> list[str]:
    """Manifest URIs for a path, glob or list of them, sorted so every run sees one order."""
    import fsspec

    out: list[str] = []
    for item in [spec] if isinstance(spec, str) else spec:
        fs, path = fsspec.core.url_to_fs(item)
        paths = fs.glob(path) if fsspec.core.has_magic(path) else ([path] if fs.exists(path) else [])
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


def index(manifest: str, chunk: int) -> list[dict]:
    """One pass over a manifest: chunks of `chunk` positions with their byte offset and row count, so that
    each read task seeks straight to its own chunk.

    Chunks are what make the pipeline parallel and its progress steady: Ray Data gives each task's output
    one block and hands an actor one task per block, so one big block would go through one decode actor
    and one engine, and nothing would be committed until all of it was done."""
    import fsspec

    if format_of(manifest) == "parquet":
        import pyarrow.parquet as pq

        with fsspec.open(manifest, "rb") as f:
            n = pq.ParquetFile(f).metadata.num_rows
        return [{"manifest": manifest, "start": s, "stop": min(s + chunk, n), "offset": 0, "rows": min(chunk, n - s)}
                for s in range(0, n, chunk)]
    chunks: list[dict] = []
    pos = line = 0
    with fsspec.open(manifest, "rb") as f:
        for raw in f:
            if line % chunk == 0:
                chunks.append({"manifest": manifest, "start": line, "stop": line + chunk, "offset": pos, "rows": 0})
            chunks[-1]["rows"] += bool(raw.strip())
            pos += len(raw)
            line += 1
    if chunks:
        chunks[-1]["stop"] = line
    return chunks


def plan(manifests: list[str], chunk: int, done: dict[str, list[int]]) -> tuple[list[dict], int]:
    """Read tasks for the manifests (indexed in parallel as Ray tasks) minus finished chunks, and rows in."""
    import ray

    task = ray.remote(num_cpus=LIGHT_CPUS)(index)
    chunks = [c for part in ray.get([task.remote(m, chunk) for m in manifests]) for c in part]
    rows_in = sum(c["rows"] for c in chunks)
    todo = []
    for c in chunks:
        rows = [r for r in done.get(c["manifest"], []) if c["start"] <= r < c["stop"]]
        if len(rows) < c["rows"]:
            todo.append({**c, "done": rows})
    return todo, rows_in


def read_batches(batch: pa.Table) -> Iterator[pa.Table]:
    """Ray Data UDF: chunk descriptions in, their manifest rows out."""
    for c in batch.to_pylist():
        table = read_chunk(c["manifest"], c["start"], c["stop"], c["offset"], set(c["done"]))
        if table is not None:
            yield table


def read(chunks: list[dict]):
    """The manifest rows of the planned chunks as a Ray Dataset, one block per chunk."""
    import ray

    return ray.data.from_items(chunks, override_num_blocks=max(len(chunks), 1)).map_batches(
        read_batches, batch_size=1, batch_format="pyarrow", num_cpus=LIGHT_CPUS)
