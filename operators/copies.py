"""Copies of one clip found among millions: locality-sensitive buckets grouped on the cluster, copies
verified within each bucket, clusters closed transitively, one row kept per cluster.

1. Every row with an identity (operators/fingerprint.py) goes into a few buckets: its exact audio hash, and
   per signature band its band value with its length (`fingerprint.buckets`). Ray Data groups the rows by
   bucket, so only rows that share one are ever compared.
2. Within a bucket, rows (shortest first) are compared with the bucket's representatives: a copy is one
   whose fingerprint's bit error rate, at the best offset, is at most `dedup.max_ber` and whose length
   differs by at most `dedup.max_length_gap_s` (or whose audio hash is equal). A row that matches none
   becomes a representative. Each match is an edge.
3. The edges (one per copy found, not one per row) are closed into connected components (scipy), and
   each component keeps one input row; the others get `duplicate_of` its id. The kept row is one that an
   earlier run kept (`earlier`), so that what was kept and captioned on an earlier night stays kept and a new
   copy is its duplicate whatever its id; in a component of new rows only, the row with the lowest `id`. A
   component with an evaluation row (`dedup.exclude`) marks every input row in it `contaminated_by` the
   lowest evaluation id.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.stage import LIGHT_CPUS, Columns, put

READS = ["source_manifest", "source_row", "id", "audio_hash", "fingerprint", "signature", "active_s", "error"]
INPUT, EXCLUDE = 0, 1  # sides: rows being deduplicated, rows of evaluation sets
NODE = ["side", "source_manifest", "source_row", "id"]


def keyed(batch: pa.Table, side: int, bands: int, bits: int, seconds: float) -> pa.Table:
    """One row per (row, bucket) for the rows that have an identity."""
    from operators.fingerprint import Identity, buckets

    ok = batch.filter(pc.and_(pc.is_null(batch["error"]), pc.is_valid(batch["fingerprint"])))
    take, keys = [], []
    for i, (h, sig, active) in enumerate(zip(*(ok[c].to_pylist() for c in ("audio_hash", "signature", "active_s")))):
        ident = Identity(h, b"", sig % (1 << 64), active)
        for key in buckets(ident, bands, bits, seconds):
            take.append(i)
            keys.append(key)
    out = ok.select(READS[:-1]).take(pa.array(take, pa.int64()))
    return out.append_column("key", pa.array(keys, pa.int64())).append_column(
        "side", pa.array([side] * len(take), pa.int8()))


def verify(bucket: pa.Table, max_ber: float, max_gap_s: float, max_bucket: int) -> pa.Table:
    """Edges between copies in one bucket: each row against the representatives found before it."""
    from operators.fingerprint import bit_error_rate

    rows = sorted(bucket.to_pylist(), key=lambda r: (r["active_s"], r["side"], r["id"]))
    edges: list[tuple[dict, dict]] = []
    # A bucket beyond max_bucket rows is compared in runs of that many (by length): copies have near-equal
    # lengths, so they stay in one run or are joined through another bucket they share.
    for a in range(0, len(rows), max_bucket):
        reps: list[dict] = []
        for r in rows[a:a + max_bucket]:
            matched = False
            for rep in reps:
                if abs(r["active_s"] - rep["active_s"]) > max_gap_s:
                    continue
                if r["audio_hash"] == rep["audio_hash"] or bit_error_rate(r["fingerprint"], rep["fingerprint"]) <= max_ber:
                    edges.append((rep, r))
                    matched = True
            if not matched:
                reps.append(r)
    return pa.table({f"{end}_{c}": [e[k][c] for e in edges] for k, end in enumerate("ab") for c in NODE},
                    schema=pa.schema([(f"{end}_{c}", t) for end in "ab" for c, t in
                                      zip(NODE, (pa.int8(), pa.string(), pa.int64(), pa.string()))]))


def _in(batch: pa.Table, refs: list) -> pa.Table:
    """The rows of `batch` in a bucket of the new rows (whose keys `refs` hold, fetched here, not by the driver)."""
    import ray

    keys = pa.concat_tables(ray.get(refs)).select(["key"])
    return batch.join(keys.group_by("key").aggregate([]), "key", join_type="left semi")


def identified(parts: list[str], filesystem) -> list[str]:
    """The parts holding a row with an identity, told by their footers (the audio hash column's null count,
    read READERS at once): parts of bad audio only are never read, and a night whose new rows have none
    starts no Ray Data pass to find that out."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from operators.ledger import READERS

    def some(part: str) -> bool:
        meta = pq.ParquetFile(part, filesystem=filesystem).metadata
        col = meta.schema.names.index("audio_hash")
        stats = [meta.row_group(g).column(col).statistics for g in range(meta.num_row_groups)]
        # No statistics (another writer): read it.
        return any(s is None or not s.has_null_count or s.null_count < meta.row_group(g).num_rows
                   for g, s in enumerate(stats))

    with ThreadPoolExecutor(READERS) as pool:
        return [p for p, yes in zip(parts, pool.map(some, parts)) if yes]


def edges(new: list[str], old: list[str], excludes: list[str], cfg, filesystem) -> pa.Table:
    """The copy edges of the identity parts `new` with each other, with the parts `old` (identities an earlier
    run marked) and with the evaluation parts `excludes`, found on Ray. Only buckets that hold a new row (or an
    evaluation row) are compared: earlier rows are read for their bucket keys and, outside those buckets,
    never grouped or compared again, so the night's comparing grows with its new rows."""
    import ray

    d = cfg.dedup
    kw = dict(bands=d.bands, bits=d.bits, seconds=d.length_grid_s)
    empty = verify(pa.table({c: [] for c in READS[:-1] + ["side"]}), 0, 0, 1)

    def side(files, s):
        return ray.data.read_parquet(files, columns=READS, filesystem=filesystem).map_batches(
            keyed, fn_kwargs=dict(side=s, **kw), batch_format="pyarrow", num_cpus=LIGHT_CPUS)

    sides = [side(files, s) for files, s in ((identified(new, filesystem), INPUT), (excludes, EXCLUDE)) if files]
    if not sides:
        return empty
    fresh = (sides[0].union(*sides[1:]) if len(sides) > 1 else sides[0]).materialize()
    if not fresh.count():
        return empty  # no new row (nor evaluation row) has an identity: nothing to compare
    ds = fresh
    if old:
        refs = fresh.select_columns(["key"]).to_arrow_refs()  # object refs: the keys stay in the object store
        ds = fresh.union(side(old, INPUT).map_batches(_in, fn_kwargs={"refs": refs}, batch_format="pyarrow",
                                                      num_cpus=LIGHT_CPUS))
    found = ds.materialize().groupby("key").map_groups(
        verify, fn_kwargs=dict(max_ber=d.max_ber, max_gap_s=d.max_length_gap_s, max_bucket=d.max_bucket),
        batch_format="pyarrow", num_cpus=LIGHT_CPUS)
    tables = [t for t in ray.get(found.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else empty


MARKED = ["source_manifest", "source_row", "duplicate_of", "contaminated_by"]


def nodes_of(found: pa.Table) -> pa.Table:
    """Both ends of every edge: one row per (edge end), NODE columns."""
    return pa.concat_tables([found.select([f"{e}_{c}" for c in NODE]).rename_columns(NODE) for e in "ab"])


def _among(batch: pa.Table, keys: pa.Table) -> pa.Table:
    return batch.join(keys, ["source_manifest", "source_row"], join_type="left semi")


def earlier(marked: list[str], found: pa.Table, filesystem) -> pa.Table:
    """The input rows in `found`'s edges that earlier runs marked already (part files `marked`), with what
    they were marked: MARKED columns. Read on Ray: the driver gets rows in clusters only, never the corpus."""
    import ray

    nodes = nodes_of(found)
    keys = nodes.filter(pc.equal(nodes["side"], INPUT)).group_by(["source_manifest", "source_row"]).aggregate([])
    empty = pa.schema([("source_manifest", pa.string()), ("source_row", pa.int64()), ("duplicate_of", pa.string()),
                       ("contaminated_by", pa.string())]).empty_table()
    if not marked or not keys.num_rows:
        return empty
    ds = ray.data.read_parquet(marked, columns=MARKED, filesystem=filesystem).map_batches(
        _among, fn_kwargs={"keys": keys}, batch_format="pyarrow", num_cpus=LIGHT_CPUS)
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables([empty, *tables], promote_options="permissive").cast(empty.schema)


def assign(found: pa.Table, before: pa.Table | None = None) -> pa.Table:
    """Per input row in a cluster of two or more: `duplicate_of` (null for the kept row) and
    `contaminated_by`; keyed by (source_manifest, source_row). `before`: what earlier runs marked (`earlier`);
    a row they kept stays kept. Vectorized: no Python object per row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = nodes_of(found)
    # One integer per node: side, manifest and row say which row it is.
    key = pc.binary_join_element_wise(pc.cast(nodes["side"], pa.string()), nodes["source_manifest"],
                                      pc.cast(nodes["source_row"], pa.string()), "#")
    codes = pc.dictionary_encode(key).combine_chunks()
    index = codes.indices.to_numpy(zero_copy_only=False)
    n, m = len(codes.dictionary), found.num_rows
    graph = coo_matrix((np.ones(m, np.int8), (index[:m], index[m:])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.unique(index, return_index=True)[1]  # one row of `nodes` per node
    table = nodes.take(pa.array(first)).append_column("cluster", pa.array(labels[index[first]]))
    inputs = table.filter(pc.equal(table["side"], INPUT))
    # Rank 0: what an earlier run kept: a row it kept (its own id), or the row an earlier copy points to
    # (`duplicate_of`: that row may lie outside these edges, which hold only buckets with new rows). Rank 1:
    # every new row. The lowest rank, then the lowest id, is the cluster's kept row.
    before = before if before is not None else pa.table({c: pa.array([], t) for c, t in zip(
        MARKED, (pa.string(), pa.int64(), pa.string(), pa.string()))})
    ranked = inputs.join(before.select(["source_manifest", "source_row", "duplicate_of"]).append_column(
        "rank", pa.array(np.zeros(before.num_rows, np.int8))), ["source_manifest", "source_row"])
    copy = pc.is_valid(ranked["duplicate_of"])
    ranked = put(ranked, rank=pc.fill_null(ranked["rank"], 1),
                 kept_id=pc.if_else(copy, ranked["duplicate_of"], ranked["id"]),
                 kept_manifest=pc.if_else(copy, pa.scalar(None, pa.string()), ranked["source_manifest"]),
                 kept_row=pc.if_else(copy, pa.scalar(None, pa.int64()), ranked["source_row"]))
    kept = ranked.sort_by([("cluster", "ascending"), ("rank", "ascending"), ("kept_id", "ascending"),
                           ("source_manifest", "ascending"), ("source_row", "ascending")])
    lead = np.r_[True, np.diff(kept["cluster"].to_numpy()) != 0] if kept.num_rows else np.zeros(0, bool)
    kept = kept.filter(pa.array(lead)).select(["cluster", "kept_manifest", "kept_row", "kept_id"])
    evaluation = table.filter(pc.equal(table["side"], EXCLUDE)).group_by("cluster").aggregate([("id", "min")])
    out = inputs.join(kept, "cluster").join(evaluation.rename_columns(["cluster", "contaminated_by"]), "cluster")
    same = pc.fill_null(pc.and_(pc.equal(out["source_manifest"], out["kept_manifest"]),
                                pc.equal(out["source_row"], out["kept_row"])), False)
    return pa.table({"source_manifest": out["source_manifest"], "source_row": out["source_row"],
                     "duplicate_of": pc.if_else(same, pa.scalar(None, pa.string()), out["kept_id"]),
                     "contaminated_by": out["contaminated_by"]})


def remarked(assignment: pa.Table, before: pa.Table) -> int:
    """Rows marked by an earlier run that the assignment now finds copying an evaluation row (a new
    `dedup.exclude` set): their committed rows are not rewritten."""
    now = assignment.join(before, ["source_manifest", "source_row"], join_type="inner", right_suffix="_before")
    return int(pc.sum(pc.and_(pc.is_valid(now["contaminated_by"]), pc.is_null(now["contaminated_by_before"]))).as_py() or 0)


# `mark`'s: `keep` and what an evaluation clip a row copies are the run's verdict, no training column.
COLUMNS = Columns(writes=("duplicate_of", "contaminated_by", "keep"), records=("contaminated_by", "keep"))


def mark(batch: pa.Table, assignment: pa.Table) -> pa.Table:
    """Ray Data UDF: `duplicate_of`, `contaminated_by` and `keep` of each identity row."""
    keys = batch.select(["source_manifest", "source_row"]).append_column("_row", pa.array(np.arange(batch.num_rows)))
    hit = keys.join(assignment, ["source_manifest", "source_row"], join_type="inner")
    dup = np.full(batch.num_rows, None, object)
    con = np.full(batch.num_rows, None, object)
    rows = hit["_row"].to_numpy()
    dup[rows] = hit["duplicate_of"].to_numpy(zero_copy_only=False)
    con[rows] = hit["contaminated_by"].to_numpy(zero_copy_only=False)
    dup, con = pa.array(dup, pa.string()), pa.array(con, pa.string())
    keep = pc.and_(pc.and_(pc.is_null(batch["error"]), pc.is_null(dup)), pc.is_null(con))
    return put(batch, duplicate_of=dup, contaminated_by=con, keep=keep)
