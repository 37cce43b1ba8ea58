"""The ledger of an output folder: what is committed, read once per run and kept up to date from there.

The part files are the only source of truth. The ledger lists them once, deletes a killed run's leftovers,
and reads from each part only the columns it needs, several files at a time (string columns dictionary
encoded). Each file is reduced at once to two packed integer keys per row and a handful of sums, so the
driver holds about 20 bytes per committed row and no per-row Python object. Resume keys, half-written
rows, duplicates, counts, errors by kind, audio hours, tokens, quality flags and commit times all come from
this one read: the runner, the summary, the report and the later jobs use it. At the end of a run
`update()` reads only the parts committed since.

An output row is one unit: an input row's window (`segment`) asked one prompt (`prompt_id`). An input row
is complete when all `segments x prompts` of its units are committed. A derived job's row (quality, export)
is the unit of the row it was made from; a rewrite's row, of each of the rows (a window's answers) it lists. Grouping is one lexsort of the keys,
O(rows log rows).
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SUMMARY, SUCCESS, PART = "_summary.json", "_SUCCESS", "part-"
# What determines the rows (operators/config.py `determining`), recorded before the first row is committed.
CONFIG = "_config.json"
UNIT = ["source_manifest", "source_row", "segment", "prompt_id"]
KEYS = [*UNIT, "segments", "prompts"]
# Read when present: counts for the summary and the report. Outputs of older runs may lack some.
STATS = ["error", "segment_start_s", "segment_end_s", "duration_s", "prompt_tokens", "output_tokens", "run_id",
         "flags", "keep", "duplicate_of", "contaminated_by"]
DICTIONARY = ["source_manifest", "prompt_id", "run_id", "input_part"]
# Parts of a derived job (quality: the rows of another job's output, one out per row in) say so in their schema
# metadata; their unit is the row they were made from: (input_part, input_row), one each.
DERIVED = {b"earmark.keys": b"input_part,input_row"}
INPUT = ["input_part", "input_row"]
# Packed keys: manifest index and row in one int64, window and prompt index in another.
ROW_BITS, PROMPT_BITS = 40, 20
READERS = 16  # part files read at once: I/O bound on object stores, and pyarrow decodes without the GIL
# Clip durations are counted in these bins (log-spaced, 0.1 s to 24 h): a histogram per file, no array per row.
DURATION_BINS = np.geomspace(0.1, 86_400, 61)


def output_fs(output: str):
    """(filesystem, root) of the output, with cached listings dropped.

    fsspec shares one filesystem object per process and s3fs caches listings in it: a listing taken before
    this run committed its files would hide them from the summary and from a resume.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(output)
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def error_kind(error: str) -> str:
    """'decode/missing: file: reason' -> 'decode/missing'."""
    return error.split(":", 1)[0]


@dataclass
class Part:
    """One committed file, reduced: packed keys per row and additive sums."""

    path: str
    mtime: float
    rows: int
    units: int = 0  # the input units its rows stand for: its rows, or a rewrite's input rows
    # Until merged into the ledger's sorted keys (then dropped): per row, manifest index << ROW_BITS |
    # source_row; segment << PROMPT_BITS | prompt index; segments x prompts of its input row.
    keys: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    first_error: dict = field(default_factory=dict)  # kind -> its first message
    audio_s: float = 0.0
    window_s: float = 0.0  # the ok rows' windows summed, each row counted (an exported dataset's audio)
    prompt_tokens: int = 0
    output_tokens: dict = field(default_factory=dict)  # run_id -> output tokens of its ok rows
    durations: np.ndarray | None = None  # input rows per DURATION_BINS bin (each counts once)
    flags: Counter = field(default_factory=Counter)
    flagged: int = 0  # rows with any flag
    keep: int | None = None  # rows kept, when the output has `keep`
    duplicates: int = 0  # dedup outputs: rows that copy a kept row,
    contaminated: int = 0  # ... rows that copy an evaluation row,
    clusters: set | None = None  # ... and the kept rows that have copies (their ids); None: not a dedup output


def _mtime(info: dict) -> float:
    """Commit time from fsspec file info: `mtime` on local disks, `LastModified` on S3."""
    t = info.get("mtime", info.get("LastModified", info.get("created", 0.0)))
    return t.timestamp() if hasattr(t, "timestamp") else float(t)


def _np(column, dtype) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


class Ledger:
    """What `output` holds. `Ledger(output).update()` lists and reads it; `update()` again reads new parts."""

    def __init__(self, output: str):
        self.output = output
        self.parts: dict[str, Part] = {}
        self.manifests: list[str] = []
        self.prompt_ids: list[str] = []
        self._manifest_index: dict[str, int] = {}
        self._prompt_index: dict[str, int] = {}
        self._lock = threading.Lock()  # the two indexes above are shared by the reader threads
        # Every committed unit once, sorted by (input row, unit), with its row's expected unit count.
        self._units = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))
        self._rows = None

    # -- reading ----------------------------------------------------------------------------------------
    def update(self) -> "Ledger":
        """List the output, delete leftovers of interrupted writes, and read the parts not read yet."""
        fs, root = output_fs(self.output)
        if not fs.exists(root):
            return self
        new = []
        for info in fs.ls(root, detail=True):  # the folder itself only: clips/ and the like are not parts
            path, name = info["name"], info["name"].rsplit("/", 1)[-1]
            if name.startswith(".") and name.endswith(".tmp"):
                fs.rm(path)  # an interrupted write
            elif name.startswith(PART) and name.endswith(".parquet") and path not in self.parts:
                new.append((path, _mtime(info)))
        if new:
            # Each thread reads and reduces its file, so only READERS tables are in memory at once.
            with ThreadPoolExecutor(READERS) as pool:
                for part in pool.map(lambda p: self._reduce(p[0], p[1], self._read(fs, p[0])), new):
                    self.parts[part.path] = part
            self._merge()
        return self

    @staticmethod
    def _read(fs, path: str) -> pa.Table:
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            meta = pq.read_metadata(f)
            schema = meta.schema.to_arrow_schema()
            names = set(schema.names)
            # Plain string columns only (a rewrite's `input_part` is a list).
            plain = [c for c in DICTIONARY if c in names and pa.types.is_string(schema.field(c).type)]
            pf = pq.ParquetFile(f, metadata=meta, read_dictionary=plain)
            table = pf.read(columns=[c for c in KEYS + STATS + INPUT if c in names])
            return table.replace_schema_metadata(pf.schema_arrow.metadata)

    def _index(self, values: pa.Array, index: dict, names: list) -> np.ndarray:
        """Global indices of a dictionary-encoded column's values (manifests, prompt ids): small dicts."""
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        if not pa.types.is_dictionary(values.type):
            values = values.dictionary_encode()
        codes = []
        with self._lock:
            for name in values.dictionary.to_pylist():
                if name not in index:
                    index[name] = len(names)
                    names.append(name)
                codes.append(index[name])
        return np.asarray(codes, np.int64)[values.indices.to_numpy(zero_copy_only=False)]

    def _reduce(self, path: str, mtime: float, t: pa.Table) -> Part:
        if "input_part" in t.column_names and pa.types.is_list(t.schema.field("input_part").type):
            # A rewrite's rows: each made from several rows of its input (a window's answers), listed. Its
            # input rows are its units: done once a row made from them, and its `prompts` siblings, is committed.
            lengths = _np(pc.list_value_length(t["input_part"]), np.int64)
            m = self._index(pc.list_flatten(t["input_part"]), self._manifest_index, self.manifests)
            p = self._index(t["prompt_id"], self._prompt_index, self.prompt_ids)
            keys = ((m << ROW_BITS) | _np(pc.list_flatten(t["input_row"]), np.int64), np.repeat(p, lengths),
                    np.repeat(_np(t["prompts"], np.int32), lengths))
        elif (t.schema.metadata or {}).get(b"earmark.keys") == DERIVED[b"earmark.keys"]:
            m = self._index(t["input_part"], self._manifest_index, self.manifests)
            keys = ((m << ROW_BITS) | _np(t["input_row"], np.int64), np.zeros(t.num_rows, np.int64),
                    np.ones(t.num_rows, np.int32))
        else:
            m = self._index(t["source_manifest"], self._manifest_index, self.manifests)
            p = self._index(t["prompt_id"], self._prompt_index, self.prompt_ids)
            segment, segments, prompts = (_np(t[c], np.int64) for c in ("segment", "segments", "prompts"))
            keys = ((m << ROW_BITS) | _np(t["source_row"], np.int64), (segment << PROMPT_BITS) | p,
                    (segments * prompts).astype(np.int32))
        part = Part(path, mtime, t.num_rows, units=len(keys[0]), keys=keys)
        names = set(t.column_names)
        good = pc.is_null(t["error"]) if "error" in names else pa.array(np.ones(t.num_rows, bool))
        part.ok = int(pc.sum(good).as_py() or 0)
        if part.ok < t.num_rows:
            errs = t["error"].filter(pc.invert(good))
            kinds = pc.list_element(pc.split_pattern(errs, ":", max_splits=1), 0)  # what error_kind() gives
            for kind, n in zip(*pc.value_counts(kinds).flatten()):
                part.errors[kind.as_py()] += n.as_py()
                part.first_error[kind.as_py()] = errs[pc.index(kinds, kind).as_py()].as_py()
        if "prompts" not in names:  # an export's rows: each row its own window
            t = t.append_column("prompts", pa.array(np.ones(t.num_rows, np.int32)))
        ok = t.filter(good)
        if {"segment_start_s", "segment_end_s"} <= names:
            # Each window once however many prompts it was asked: each of its rows carries 1/prompts of it.
            span = pc.divide(pc.subtract(ok["segment_end_s"], ok["segment_start_s"]), pc.cast(ok["prompts"], pa.float64()))
            part.audio_s = float(pc.sum(span).as_py() or 0.0)
            part.window_s = float(pc.sum(pc.subtract(ok["segment_end_s"], ok["segment_start_s"])).as_py() or 0.0)
        if "prompt_tokens" in names:
            part.prompt_tokens = int(pc.sum(ok["prompt_tokens"]).as_py() or 0)
        if "output_tokens" in names:
            by_run = ok.group_by("run_id").aggregate([("output_tokens", "sum")]) if "run_id" in names else None
            part.output_tokens = ({str(r): int(n or 0) for r, n in zip(by_run["run_id"].to_pylist(),
                                                                       by_run["output_tokens_sum"].to_pylist())}
                                  if by_run is not None else {"": int(pc.sum(ok["output_tokens"]).as_py() or 0)})
        if "duration_s" in names:
            first = t.filter(pc.and_(pc.equal(t["segment"], 0), pc.is_valid(t["duration_s"])))
            # An input row's first window is in `prompts` rows: each carries 1/prompts of the row.
            part.durations = np.histogram(np.clip(_np(first["duration_s"], np.float64), DURATION_BINS[0], DURATION_BINS[-1]),
                                          DURATION_BINS, weights=1.0 / _np(first["prompts"], np.float64))[0]
        if "flags" in names:
            flags = pc.list_flatten(t["flags"])
            for name, n in zip(*(pc.value_counts(flags).flatten() if len(flags) else ([], []))):
                part.flags[name.as_py()] += n.as_py()
            part.flagged = int(pc.sum(pc.greater(pc.fill_null(pc.list_value_length(t["flags"]), 0), 0)).as_py() or 0)
        if "keep" in names:
            part.keep = int(pc.sum(pc.fill_null(t["keep"], False)).as_py() or 0)
        if "duplicate_of" in names:
            copies = t["duplicate_of"].drop_null()
            part.duplicates, part.clusters = len(copies), set(pc.unique(copies).to_pylist())
            part.contaminated = t.num_rows - t["contaminated_by"].null_count
        return part

    # -- resume -----------------------------------------------------------------------------------------
    def _merge(self) -> None:
        """Merge the keys of newly read parts into the sorted unique units (one lexsort), then drop them."""
        new = [p.keys for p in self.parts.values() if p.keys is not None]
        row, unit, expected = (np.concatenate([old, *(k[i] for k in new)]) for i, old in enumerate(self._units))
        for p in self.parts.values():
            p.keys = None
        order = np.lexsort((unit, row))
        row, unit, expected = row[order], unit[order], expected[order]
        del order
        first = np.ones(len(row), bool)
        first[1:] = (row[1:] != row[:-1]) | (unit[1:] != unit[:-1])
        self._units = (row[first], unit[first], expected[first])  # each unit once: duplicates are rows - units
        self._rows = None

    def _grouped(self) -> dict:
        """Per input row (sorted): its key and whether all its units are committed; per unit, the latter."""
        if self._rows is None:
            row, _, expected = self._units
            starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if len(row) else np.zeros(0, np.int64)
            units_per_row = np.diff(np.r_[starts, len(row)])
            complete = units_per_row >= expected[starts]
            self._rows = {"rows": row[starts], "complete": complete,
                          "unit_complete": np.repeat(complete, units_per_row)}
        return self._rows

    def done(self) -> dict[str, np.ndarray]:
        """Input rows per manifest whose every window and prompt is committed (sorted positions)."""
        g = self._grouped()
        rows = g["rows"][g["complete"]]
        m, r = rows >> ROW_BITS, rows & ((1 << ROW_BITS) - 1)
        cuts = np.searchsorted(m, np.arange(len(self.manifests) + 1))
        return {self.manifests[i]: r[cuts[i]:cuts[i + 1]] for i in range(len(self.manifests)) if cuts[i + 1] > cuts[i]}

    def partial(self) -> pa.Table:
        """The committed units of input rows that are not complete (a commit holds a fixed number of rows,
        so a crash can leave an input row half written): the write stage drops these, writing the rest."""
        keep = ~self._grouped()["unit_complete"]
        row, unit = self._units[0][keep], self._units[1][keep]
        manifests, prompts = np.asarray(self.manifests, object), np.asarray(self.prompt_ids, object)
        return pa.table({"source_manifest": pa.array(manifests[row >> ROW_BITS] if len(row) else [], pa.string()),
                         "source_row": pa.array(row & ((1 << ROW_BITS) - 1), pa.int64()),
                         "segment": pa.array(unit >> PROMPT_BITS, pa.int32()),
                         "prompt_id": pa.array(prompts[unit & ((1 << PROMPT_BITS) - 1)] if len(unit) else [],
                                               pa.string())})

    # -- counts -----------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts.values())

    def commits(self) -> list[tuple[float, int]]:
        """(commit time, rows) per part file, in time order."""
        return sorted((p.mtime, p.rows) for p in self.parts.values())

    def durations(self) -> np.ndarray:
        """Committed input rows per bin of DURATION_BINS (their source duration)."""
        return sum((p.durations for p in self.parts.values() if p.durations is not None),
                   np.zeros(len(DURATION_BINS) - 1))

    def counts(self, run_id: str | None = None) -> dict:
        """What the summary reports of the committed output."""
        parts = list(self.parts.values())
        errors, first, flags = Counter(), {}, Counter()
        for p in parts:
            errors.update(p.errors)
            flags.update(p.flags)
            for kind, message in p.first_error.items():
                first.setdefault(kind, message)
        out = {
            "rows_out": int(self._grouped()["complete"].sum()),
            "output_rows": self.rows,
            "duplicate_rows": sum(p.units for p in parts) - len(self._units[0]),
            "rows_ok": sum(p.ok for p in parts),
            "rows_error": sum(errors.values()),
            "errors_by_kind": dict(sorted(errors.items())),
            "first_error_by_kind": dict(sorted(first.items())),
            "audio_hours": round(sum(p.audio_s for p in parts) / 3600, 6),
            "prompt_tokens": sum(p.prompt_tokens for p in parts),
            "output_tokens": sum(sum(p.output_tokens.values()) for p in parts),
            "files": len(parts),
        }
        if run_id is not None:
            out["output_tokens_this_run"] = sum(p.output_tokens.get(run_id, 0) for p in parts)
        if any(p.keep is not None or p.flags for p in parts):
            out["flags"] = dict(sorted(flags.items()))
            out["rows_flagged"] = sum(p.flagged for p in parts)
        if any(p.keep is not None for p in parts):
            out["rows_kept"] = sum(p.keep or 0 for p in parts)
        if any(p.clusters is not None for p in parts):
            out["clusters"] = len(set().union(*(p.clusters for p in parts if p.clusters is not None)))
            out["duplicates"] = sum(p.duplicates for p in parts)
            out["contaminated"] = sum(p.contaminated for p in parts)
        return out

    def sample(self, k: int, seed: int, columns: list[str]) -> pa.Table | None:
        """Up to k committed rows drawn at random (seeded), reading only their files and `columns`."""
        import pyarrow.parquet as pq

        parts = sorted(self.parts.values(), key=lambda p: p.path)
        total = sum(p.rows for p in parts)
        if not total:
            return None
        picks = np.sort(np.random.default_rng(seed).choice(total, min(k, total), replace=False))
        starts = np.cumsum([0] + [p.rows for p in parts])
        which = np.searchsorted(starts, picks, side="right") - 1
        fs, _ = output_fs(self.output)
        tables = []
        for i in np.unique(which):
            with fs.open(parts[i].path, "rb") as f:
                pf = pq.ParquetFile(f)
                t = pf.read(columns=[c for c in columns if c in pf.schema_arrow.names])
            tables.append(t.take(pa.array(picks[which == i] - starts[i])))
        return pa.concat_tables(tables, promote_options="permissive")

    # -- the config the rows were made with -----------------------------------------------------------------
    def refusal(self, values: dict) -> str | None:
        """Why rows made with `values` must not join this output: the first key whose recorded value differs.
        None when they may: nothing committed yet, no record (an output of an older earmark), or equal values."""
        fs, root = output_fs(self.output)
        if not fs.exists(f"{root}/{CONFIG}") or not (self.parts or fs.glob(f"{root}/{PART}*.parquet")):
            return None
        with fs.open(f"{root}/{CONFIG}", "r") as f:
            old = json.load(f)
        for key in sorted(set(old) | set(values)):
            if old.get(key) != values.get(key):
                return (f"{key}: {self.output} holds rows made with {json.dumps(old.get(key))}, and this run has "
                        f"{json.dumps(values.get(key))}")
        return None

    def record(self, values: dict) -> None:
        fs, root = output_fs(self.output)
        fs.makedirs(root, exist_ok=True)
        with fs.open(f"{root}/{CONFIG}", "w") as f:
            json.dump(values, f, indent=2, sort_keys=True)

    def write_summary(self, summary: dict) -> None:
        fs, root = output_fs(self.output)
        with fs.open(f"{root}/{SUMMARY}", "w") as f:
            json.dump(summary, f, indent=2)

    def mark_success(self) -> None:
        """Written last: the output is complete."""
        fs, root = output_fs(self.output)
        fs.touch(f"{root}/{SUCCESS}")
