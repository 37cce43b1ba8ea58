"""The stage contract shared by every operator, and the Arrow helpers they use.

A stage is its config plus a UDF that Ray Data runs with `map_batches(batch_format="pyarrow")`.
Batches stay Arrow end to end so pass-through columns (nested conversations, metadata) reach the
output parquet exactly as they came in, and audio travels as one nested `list<float32>` column (the
clips of each row) without per-row Python objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np
import pyarrow as pa

ERROR = "error"
# CPU share for the light stages (manifest parsing, prompt strings, parquet writes): a fraction, so that on
# a small box they never starve the decode and engine actors of whole cores.
LIGHT_CPUS = 0.25


class Stage:
    """Base class: declare `reads`/`writes`/`drops`, do heavy set-up in `setup()` (once per actor), and map one
    batch to the next in `process()`. Rows that already carry an `error` must pass through untouched.

    The declarations are the stage's contract, enforced on every batch (async stages call `needs` and `done`
    themselves): a column it reads must be there, a column it adds must be declared, and what it drops leaves.
    Of what it writes, `working` and `records` say what a row is for: the write stage, the export and dedup's
    kept manifest take their column sets from them (`declared`), so a new column is declared once, here.
    """

    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()  # and the job's text column, which its config names (`written`)
    drops: ClassVar[tuple[str, ...]] = ()  # read here and by no stage after: they leave the rows
    working: ClassVar[tuple[str, ...]] = ()  # for the stages after it only: never written to the output
    records: ClassVar[tuple[str, ...]] = ()  # how the row was made (counts, hashes, scores): no training column

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        written_only(cls.__name__, cls)

    def __init__(self, **cfg: Any):
        self.cfg = cfg
        self.setup()

    def setup(self) -> None:
        """Load what the stage needs (processors, engines); runs in the actor, not the driver."""

    def teardown(self) -> None:
        """Release what `setup` took (engine processes)."""

    def process(self, batch: pa.Table) -> pa.Table | Iterator[pa.Table]:
        raise NotImplementedError

    def written(self) -> set[str]:
        """The columns it may add: `writes`, and those its config names (a job's text column)."""
        return set(self.writes)

    def needs(self, batch: pa.Table) -> None:
        missing = [c for c in self.reads if c not in batch.column_names]
        if missing:
            raise KeyError(f"{type(self).__name__} needs columns {missing}; got {batch.column_names}")

    def done(self, batch: pa.Table, out: pa.Table) -> pa.Table:
        """`out` (made from `batch`) without the columns the stage drops; refused if it adds undeclared ones."""
        out = dropped(out, self.drops)
        extra = set(out.column_names) - set(batch.column_names) - self.written()
        if extra:
            raise KeyError(f"{type(self).__name__} wrote columns it does not declare: {sorted(extra)}")
        return out

    def __call__(self, batch: pa.Table) -> pa.Table | Iterator[pa.Table]:
        self.needs(batch)
        out = self.process(batch)
        return self.done(batch, out) if isinstance(out, pa.Table) else (self.done(batch, t) for t in out)

    def __del__(self) -> None:
        self.teardown()


@dataclass(frozen=True)
class Columns:
    """The declarations of a Ray Data function that is not a Stage (read, write, dedup's marks), as a Stage's."""

    writes: tuple[str, ...] = ()
    working: tuple[str, ...] = ()
    records: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        written_only("a Columns", self)


def written_only(name: str, part) -> None:
    """A declaration of working or records columns must be one of written columns."""
    stray = (set(part.working) | set(part.records)) - set(part.writes)
    if stray:
        raise TypeError(f"{name} declares {sorted(stray)} working or records, but not in its writes")


def declared(kind: str, *parts) -> tuple[str, ...]:
    """The columns that `parts` (Stage classes and Columns) declare as `kind` ("writes", "working", "records"),
    each once, in order."""
    return tuple(dict.fromkeys(c for p in parts for c in getattr(p, kind)))


def actors(size: int | tuple[int, int], calls_per_actor: int | None = None):
    """A pool of `size` actors (or between min and max), each running up to `calls_per_actor` batches at
    once (async UDFs)."""
    from ray.data import ActorPoolStrategy

    if isinstance(size, int):
        return ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=calls_per_actor)
    return ActorPoolStrategy(min_size=size[0], max_size=size[1], max_concurrent_calls_per_actor=calls_per_actor)


def put(table: pa.Table, **columns: Any) -> pa.Table:
    """Set (add or replace) columns; values are Arrow arrays or Python/numpy sequences."""
    for name, values in columns.items():
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


def dropped(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    # Each name once: Arrow drops a name given twice twice over, taking the column after it.
    return table.drop_columns([c for c in dict.fromkeys(columns) if c in table.column_names])


def errors(table: pa.Table) -> list[str | None]:
    return table.column(ERROR).to_pylist() if ERROR in table.column_names else [None] * table.num_rows


def audio_column(rows: list[list[np.ndarray] | None]) -> pa.Array:
    """Each row's clips (ragged float32 arrays) as one `large_list<large_list<float32>>` Arrow column,
    None for rows without audio. One contiguous buffer: no per-row Python objects cross Ray."""
    clips = [c for r in rows if r is not None for c in r]
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    inner_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.concatenate(clips).astype(np.float32, copy=False) if clips else np.zeros(0, np.float32)
    inner = pa.LargeListArray.from_arrays(pa.array(inner_offsets), pa.array(values))
    counts = np.array([0 if r is None else len(r) for r in rows], dtype=np.int64)
    outer_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(outer_offsets), inner, mask=pa.array([r is None for r in rows]))


def audio_arrays(column: pa.ChunkedArray | pa.Array) -> list[list[np.ndarray] | None]:
    """Inverse of `audio_column`: each row's clips as zero-copy numpy views, None for rows without audio."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[list[np.ndarray] | None] = []
    for chunk in chunks:
        chunk = chunk.cast(pa.large_list(pa.large_list(pa.float32())))
        outer, valid = chunk.offsets.to_numpy(), chunk.is_valid().to_numpy(zero_copy_only=False)
        inner = chunk.values
        offsets, values = inner.offsets.to_numpy(), inner.values.to_numpy(zero_copy_only=False)
        clips = [values[offsets[j]:offsets[j + 1]] for j in range(len(inner))]
        out.extend(clips[outer[i]:outer[i + 1]] if valid[i] else None for i in range(len(chunk)))
    return out
