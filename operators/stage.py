"""The stage contract shared by every operator, and the Arrow helpers they use.

A stage is its config plus a UDF that Ray Data runs with `map_batches(batch_format="pyarrow")`.
Batches stay Arrow end to end so pass-through columns (nested conversations, metadata) reach the
output parquet exactly as they came in, and audio travels as one `list<float32>` column without
per-row Python objects.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

ERROR = "error"
# CPU share for the light stages (manifest parsing, prompt strings, parquet writes): a fraction, so that on
# a small box they never starve the decode and engine actors of whole cores.
LIGHT_CPUS = 0.25


class Stage:
    """Base class: declare `reads`/`writes`, do heavy set-up in `setup()` (once per actor), and map one
    batch to the next in `process()`. Rows that already carry an `error` must pass through untouched."""

    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **cfg: Any):
        self.cfg = cfg
        self.setup()

    def setup(self) -> None:
        """Load what the stage needs (processors, engines); runs in the actor, not the driver."""

    def teardown(self) -> None:
        """Release what `setup` took (engine processes)."""

    def process(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in self.reads if c not in batch.column_names]
        if missing:
            raise KeyError(f"{type(self).__name__} needs columns {missing}; got {batch.column_names}")
        return self.process(batch)

    def __del__(self) -> None:
        self.teardown()


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


def errors(table: pa.Table) -> list[str | None]:
    return table.column(ERROR).to_pylist() if ERROR in table.column_names else [None] * table.num_rows


def audio_column(arrays: list[np.ndarray | None]) -> pa.Array:
    """Ragged float32 audio as one `list<float32>` Arrow column (None for rows without audio)."""
    lengths = np.array([0 if a is None else len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    present = [a for a in arrays if a is not None]
    values = np.concatenate(present).astype(np.float32, copy=False) if present else np.zeros(0, np.float32)
    mask = pa.array([a is None for a in arrays])
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values), mask=mask)


def audio_arrays(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    """Inverse of `audio_column`: zero-copy numpy views, None for null rows."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[np.ndarray | None] = []
    for chunk in chunks:
        chunk = chunk.cast(pa.large_list(pa.float32()))
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.to_numpy(zero_copy_only=False)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        out.extend(values[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(chunk)))
    return out
