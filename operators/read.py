"""Read manifests (jsonl or parquet; local paths, globs, lists, or any fsspec URI): one row per audio item.

The driver only lists manifest files; their rows are parsed in Ray workers, one file at a time and in
bounded batches, so a large manifest never sits in the driver. A line that is not JSON or lacks
`audio` becomes an error row instead of failing the read.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Iterator

import pyarrow as pa

from operators.stage import LIGHT_CPUS

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
WRITES = ("id", "audio", "error", "source_manifest", "source_row")
ROWS_PER_BATCH = 1024


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
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    return f"{base}/{audio}"


def _row(manifest: str, index: int, rec: object, error: str | None = None) -> dict:
    if error is None and not isinstance(rec, dict):
        error = f"read/bad_row: {manifest}:{index + 1}: expected a JSON object, got {type(rec).__name__}"
    rec = rec if isinstance(rec, dict) and error is None else {}
    audio = rec.get("audio")
    if error is None and not isinstance(audio, str):
        error = (f"read/no_audio: {manifest}:{index + 1}: row has no 'audio' path"
                 if audio is None else f"read/bad_audio: {manifest}:{index + 1}: 'audio' must be a string path")
    rid = rec.get("id")
    return {
        **rec,
        "id": str(rid) if rid is not None else derive_id(manifest, index),
        "audio": resolve(audio, manifest) if error is None else (audio if isinstance(audio, str) else None),
        "error": error,
        "source_manifest": manifest,
        "source_row": index,
    }


def _jsonl_rows(manifest: str, f, skip: set[int]) -> Iterator[dict]:
    for i, line in enumerate(f):
        if i in skip or not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            yield _row(manifest, i, None, f"read/bad_json: {manifest}:{i + 1}: {e}")
            continue
        yield _row(manifest, i, rec)


def _parquet_rows(manifest: str, f, skip: set[int]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_BATCH):
        for rec in batch.to_pylist():
            if index not in skip:
                yield _row(manifest, index, rec)
            index += 1


def _column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types across rows in a pass-through column: keep the data, as JSON text.
        return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())


def to_table(rows: list[dict]) -> pa.Table:
    """Rows with differing keys -> one table over the union of keys (missing values are null)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.table({k: _column([r.get(k) for r in rows]) for k in keys})


def read_manifest(manifest: str, skip: set[int] = frozenset()) -> Iterator[pa.Table]:
    """Rows of one manifest in batches of ROWS_PER_BATCH, leaving out the positions in `skip`."""
    import fsspec

    parse = _jsonl_rows if format_of(manifest) == "jsonl" else _parquet_rows
    with fsspec.open(manifest, "rt" if parse is _jsonl_rows else "rb") as f:
        rows: list[dict] = []
        for rec in parse(manifest, f, skip):
            rows.append(rec)
            if len(rows) == ROWS_PER_BATCH:
                yield to_table(rows)
                rows = []
        if rows:
            yield to_table(rows)


def read_batches(batch: pa.Table) -> Iterator[pa.Table]:
    """Ray Data UDF: manifest URIs (and rows already done) in, their rows out, as a generator so that
    memory stays bounded."""
    for manifest, done in zip(batch.column("manifest").to_pylist(), batch.column("done").to_pylist()):
        yield from read_manifest(manifest, set(done))


def read(manifests: list[str], done: dict[str, list[int]] | None = None):
    """The manifest rows as a Ray Dataset, without the rows `done` lists per manifest (resume)."""
    import ray

    done = done or {}
    items = [{"manifest": m, "done": done.get(m, [])} for m in manifests]
    return ray.data.from_items(items).map_batches(read_batches, batch_size=1, batch_format="pyarrow",
                                                  num_cpus=LIGHT_CPUS)


def count_rows(manifest: str) -> int:
    """Input rows of one manifest, counted the way `read_manifest` yields them (blank lines skipped)."""
    import fsspec

    if format_of(manifest) == "parquet":
        import pyarrow.parquet as pq

        with fsspec.open(manifest, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    with fsspec.open(manifest, "rt") as f:
        return sum(1 for line in f if line.strip())
