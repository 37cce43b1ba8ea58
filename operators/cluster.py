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
   each component keeps its input row with the lowest `id`; the others get `duplicate_of` that id. A
   component with an evaluation row (`dedup.exclude`) marks every input row in it `contaminated_by` the
   lowest evaluation id.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.stage import LIGHT_CPUS

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


def edges(inputs: list[str], excludes: list[str], cfg, filesystem) -> pa.Table:
    """All copy edges among the identity parts `inputs` and evaluation parts `excludes`, found on Ray."""
    import ray

    d = cfg.dedup
    kw = dict(bands=d.bands, bits=d.bits, seconds=d.length_grid_s)

    def side(files, s):
        return ray.data.read_parquet(files, columns=READS, filesystem=filesystem).map_batches(
            keyed, fn_kwargs=dict(side=s, **kw), batch_format="pyarrow", num_cpus=LIGHT_CPUS)

    ds = side(inputs, INPUT)
    if excludes:
        ds = ds.union(side(excludes, EXCLUDE))
    found = ds.groupby("key").map_groups(verify, fn_kwargs=dict(max_ber=d.max_ber, max_gap_s=d.max_length_gap_s,
                                                                max_bucket=d.max_bucket),
                                          batch_format="pyarrow", num_cpus=LIGHT_CPUS)
    tables = [t for t in ray.get(found.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else verify(pa.table({c: [] for c in READS[:-1] + ["side"]}), 0, 0, 1)


def assign(found: pa.Table) -> pa.Table:
    """Per input row in a cluster of two or more: `duplicate_of` (null for the kept row) and
    `contaminated_by`; keyed by (source_manifest, source_row). Vectorized: no Python object per row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ends = [found.select([f"{e}_{c}" for c in NODE]).rename_columns(NODE) for e in "ab"]
    nodes = pa.concat_tables(ends)
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
    kept = inputs.sort_by([("cluster", "ascending"), ("id", "ascending"), ("source_manifest", "ascending"),
                           ("source_row", "ascending")])
    lead = np.r_[True, np.diff(kept["cluster"].to_numpy()) != 0]
    kept = kept.filter(pa.array(lead)).select(["cluster", "source_manifest", "source_row", "id"]).rename_columns(
        ["cluster", "kept_manifest", "kept_row", "kept_id"])
    evaluation = table.filter(pc.equal(table["side"], EXCLUDE)).group_by("cluster").aggregate([("id", "min")])
    out = inputs.join(kept, "cluster").join(evaluation.rename_columns(["cluster", "contaminated_by"]), "cluster")
    same = pc.and_(pc.equal(out["source_manifest"], out["kept_manifest"]), pc.equal(out["source_row"], out["kept_row"]))
    return pa.table({"source_manifest": out["source_manifest"], "source_row": out["source_row"],
                     "duplicate_of": pc.if_else(same, pa.scalar(None, pa.string()), out["kept_id"]),
                     "contaminated_by": out["contaminated_by"]})


def mark(batch: pa.Table, assignment: pa.Table) -> pa.Table:
    """Ray Data UDF: `duplicate_of`, `contaminated_by` and `keep` of each identity row."""
    from operators.stage import put

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
