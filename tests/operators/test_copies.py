"""Clusters from copy edges: closed transitively, the lowest id kept (or what an earlier run kept), evaluation
copies marked."""
import pyarrow as pa

from operators.copies import EXCLUDE, INPUT, assign, mark, remarked, verify


def edges(pairs):
    """Edges between (side, manifest, row, id) nodes."""
    cols = {f"{end}_{c}": [] for end in "ab" for c in ("side", "source_manifest", "source_row", "id")}
    for a, b in pairs:
        for end, node in (("a", a), ("b", b)):
            for c, v in zip(("side", "source_manifest", "source_row", "id"), node):
                cols[f"{end}_{c}"].append(v)
    return pa.table({k: pa.array(v, pa.int8() if k.endswith("side") else pa.int64() if k.endswith("row") else pa.string())
                     for k, v in cols.items()})


def node(row, id, side=INPUT, manifest="m.jsonl"):
    return (side, manifest, row, id)


def test_clusters_close_transitively_and_keep_the_lowest_id():
    found = edges([(node(0, "c"), node(1, "a")), (node(1, "a"), node(2, "b")), (node(5, "x"), node(6, "y"))])
    got = {r["source_row"]: r for r in assign(found).to_pylist()}
    assert {k: got[k]["duplicate_of"] for k in got} == {0: "a", 1: None, 2: "a", 5: None, 6: "x"}
    assert all(r["contaminated_by"] is None for r in got.values())


def before(rows):
    """What an earlier run marked: (row, duplicate_of, contaminated_by) of manifest m.jsonl."""
    return pa.table({"source_manifest": ["m.jsonl"] * len(rows), "source_row": pa.array([r[0] for r in rows], pa.int64()),
                     "duplicate_of": pa.array([r[1] for r in rows], pa.string()),
                     "contaminated_by": pa.array([r[2] for r in rows], pa.string())})


def test_a_row_kept_by_an_earlier_run_stays_kept_whatever_the_new_copy_s_id():
    # Last night: "m" (row 3) kept, "n" (row 4) its copy. Tonight: "a" (row 0) copies it, and sorts first.
    found = edges([(node(3, "m"), node(4, "n")), (node(0, "a"), node(3, "m"))])
    got = {r["source_row"]: r["duplicate_of"] for r in assign(found, before([(3, None, None), (4, "m", None)])).to_pylist()}
    assert got == {0: "m", 3: None, 4: "m"}
    assert {r["source_row"]: r["duplicate_of"] for r in assign(found).to_pylist()} == {0: None, 3: "a", 4: "a"}


def test_a_new_copy_of_an_earlier_copy_points_to_the_row_kept_then():
    # Only buckets with a new row are compared: "a" (new) meets "n" (an earlier copy of "m"), never "m" itself.
    found = edges([(node(0, "a"), node(4, "n"))])
    got = {r["source_row"]: r["duplicate_of"] for r in assign(found, before([(4, "m", None)])).to_pylist()}
    assert got == {0: "m", 4: "m"}


def test_a_new_evaluation_set_is_counted_against_rows_of_earlier_runs():
    found = edges([(node(3, "m"), node(4, "n")), (node(4, "n"), node(9, "eval-1", EXCLUDE, "eval.jsonl"))])
    earlier = before([(3, None, None), (4, "m", None)])
    assert remarked(assign(found, earlier), earlier) == 2


def test_evaluation_copies_mark_their_whole_cluster():
    found = edges([(node(0, "a"), node(1, "b")), (node(1, "b"), node(9, "eval-2", EXCLUDE, "eval.jsonl")),
                   (node(1, "b"), node(8, "eval-1", EXCLUDE, "eval.jsonl"))])
    got = {r["source_row"]: r for r in assign(found).to_pylist()}
    assert set(got) == {0, 1}  # evaluation rows are not in the output
    assert got[0] == {"source_manifest": "m.jsonl", "source_row": 0, "duplicate_of": None, "contaminated_by": "eval-1"}
    assert got[1]["duplicate_of"] == "a" and got[1]["contaminated_by"] == "eval-1"


def test_mark_sets_keep_for_rows_out_of_any_cluster():
    assignment = assign(edges([(node(0, "a"), node(1, "b"))]))
    batch = pa.table({"source_manifest": ["m.jsonl"] * 3, "source_row": pa.array([0, 1, 2], pa.int64()),
                      "error": pa.array([None, None, "decode/missing: x: no such file"], pa.string())})
    out = mark(batch, assignment).to_pylist()
    assert [(r["duplicate_of"], r["keep"]) for r in out] == [(None, True), ("a", False), (None, False)]


def test_a_bucket_links_copies_to_a_representative():
    x = b"\x00\x00\x00\x00" * 100
    y = b"\xff\xff\xff\xff" * 100
    rows = pa.table({"side": pa.array([0, 0, 0], pa.int8()), "source_manifest": ["m"] * 3,
                     "source_row": pa.array([0, 1, 2], pa.int64()), "id": ["a", "b", "c"],
                     "audio_hash": ["h1", "h2", "h3"], "fingerprint": [x, x, y], "active_s": [10.0, 10.4, 10.0]})
    found = verify(rows, max_ber=0.35, max_gap_s=1.2, max_bucket=100).to_pylist()
    assert [(e["a_id"], e["b_id"]) for e in found] == [("a", "b")]
