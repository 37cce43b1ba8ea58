"""The ledger: what an output folder holds, read once, vectorized; on a local disk and on S3 (moto server)."""
import random
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pytest

from operators import ledger as ledger_mod
from operators.ledger import Ledger
from operators.write import commit


def rows(manifest="m.jsonl", keys=((0, 0, 1),), error=None, prompt_ids=None, prompts=None, run_id="run",
         start=0.0, end=1.0, duration=1.0):
    """Output rows at (source_row, segment, segments) keys, each asked one of `prompt_ids`."""
    n = len(keys)
    pids = prompt_ids or ["caption"] * n
    errors = error if isinstance(error, list) else [error] * n
    return pa.table({"id": [f"r{r}" for r, _, _ in keys], "caption": ["x"] * n, "error": pa.array(errors, pa.string()),
                     "source_manifest": [manifest] * n, "source_row": pa.array([r for r, _, _ in keys], pa.int64()),
                     "segment": pa.array([s for _, s, _ in keys], pa.int32()),
                     "segments": pa.array([k for _, _, k in keys], pa.int32()),
                     "prompt_id": pids, "prompts": pa.array([prompts or len(set(pids))] * n, pa.int32()),
                     "run_id": [run_id] * n, "segment_start_s": [start] * n, "segment_end_s": [end] * n,
                     "duration_s": [duration] * n, "prompt_tokens": pa.array([10] * n, pa.int32()),
                     "output_tokens": pa.array([3] * n, pa.int32())})


def read(out):
    return Ledger(out).update()


def test_a_row_is_done_when_every_window_is_committed(tmp_path):
    out = str(tmp_path / "out")
    commit(rows(keys=[(0, 0, 1), (1, 0, 3), (1, 2, 3), (2, 0, 2)]), out, "part-a.parquet")
    commit(rows(keys=[(2, 1, 2)]), out, "part-b.parquet")
    assert {m: r.tolist() for m, r in read(out).done().items()} == {"m.jsonl": [0, 2]}
    assert read(str(tmp_path / "none")).done() == {}


def test_a_row_is_done_when_every_prompt_is_committed(tmp_path):
    out = str(tmp_path / "out")
    commit(rows(keys=[(0, 0, 1), (0, 0, 1), (1, 0, 1)], prompt_ids=["caption", "events", "caption"], prompts=2),
           out, "part-a.parquet")
    assert {m: r.tolist() for m, r in read(out).done().items()} == {"m.jsonl": [0]}


def test_partial_lists_the_committed_units_of_half_written_rows(tmp_path):
    out = str(tmp_path / "out")
    commit(rows(keys=[(0, 0, 1), (0, 0, 1), (1, 0, 2)], prompt_ids=["caption", "events", "caption"], prompts=2),
           out, "part-a.parquet")
    ledger = read(out)
    assert {m: r.tolist() for m, r in ledger.done().items()} == {"m.jsonl": [0]}
    assert ledger.partial().to_pylist() == [
        {"source_manifest": "m.jsonl", "source_row": 1, "segment": 0, "prompt_id": "caption"}]


def test_duplicates_errors_tokens_and_audio_are_counted(tmp_path):
    out = str(tmp_path / "out")
    commit(rows(keys=[(0, 0, 1), (1, 0, 1)], start=0.0, end=2.0), out, "part-a.parquet")
    commit(rows(keys=[(1, 0, 1), (2, 0, 1)], error=["decode/corrupt: b.wav: bad header", "decode/missing: c.wav: x"],
                run_id="other"), out, "part-b.parquet")
    c = read(out).counts("run")
    assert (c["rows_out"], c["output_rows"], c["duplicate_rows"], c["rows_ok"], c["rows_error"]) == (3, 4, 1, 2, 2)
    assert c["errors_by_kind"] == {"decode/corrupt": 1, "decode/missing": 1}
    assert c["first_error_by_kind"]["decode/corrupt"] == "decode/corrupt: b.wav: bad header"
    assert c["audio_hours"] == pytest.approx(4.0 / 3600, abs=1e-6)  # rounded to 6 places
    assert (c["prompt_tokens"], c["output_tokens"], c["output_tokens_this_run"]) == (20, 6, 6)


def test_audio_counts_each_window_once_however_many_prompts(tmp_path):
    out = str(tmp_path / "out")
    t = rows(keys=[(0, 0, 1)] * 3, prompt_ids=["a", "b", "c"], start=0.0, end=6.0)
    commit(t.slice(0, 2), out, "part-a.parquet")
    commit(t.slice(2), out, "part-b.parquet")  # one window's prompts across two commits
    ledger = read(out)
    assert ledger.counts()["audio_hours"] == pytest.approx(6.0 / 3600, abs=1e-6)
    counts = ledger.durations()  # the input row once, in the bin of its 1 s duration
    assert counts.sum() == pytest.approx(1.0)
    assert counts[np.searchsorted(ledger_mod.DURATION_BINS, 1.0, side="right") - 1] == pytest.approx(1.0)


def test_update_deletes_leftovers_and_reads_only_new_parts(tmp_path):
    out = str(tmp_path / "out")
    commit(rows(keys=[(0, 0, 1)]), out, "part-a.parquet")
    (tmp_path / "out" / ".part-b.parquet.tmp").write_bytes(b"half a file")
    ledger = read(out)
    assert not (tmp_path / "out" / ".part-b.parquet.tmp").exists()
    first = dict(ledger.parts)
    commit(rows(keys=[(1, 0, 1)]), out, "part-c.parquet")
    ledger.update()
    assert len(ledger.parts) == 2 and all(ledger.parts[p] is part for p, part in first.items())
    assert ledger.counts()["rows_out"] == 2


def test_quality_flags_and_keep_are_counted(tmp_path):
    out = str(tmp_path / "out")
    t = rows(keys=[(0, 0, 1), (1, 0, 1), (2, 0, 1)])
    t = t.append_column("flags", pa.array([["loop", "too_long"], [], ["loop"]], pa.list_(pa.string())))
    t = t.append_column("keep", pa.array([False, True, False]))
    commit(t, out, "part-a.parquet")
    c = read(out).counts()
    assert (c["flags"], c["rows_flagged"], c["rows_kept"]) == ({"loop": 2, "too_long": 1}, 2, 1)


def naive(units):
    """The reference: done rows, partial units and duplicates computed row by row in Python."""
    seen, expected = defaultdict(set), {}
    for m, r, s, p, n in units:
        seen[(m, r)].add((s, p))
        expected[(m, r)] = n
    done = {k for k, v in seen.items() if len(v) >= expected[k]}
    partial = {(m, r, s, p) for m, r, s, p, _ in units if (m, r) not in done}
    dup = sum(n - 1 for n in Counter((m, r, s, p) for m, r, s, p, _ in units).values())
    return done, partial, dup


def test_random_outputs_agree_with_a_row_by_row_reference(tmp_path):
    rng = random.Random(7)
    units = []
    for m in ("a.jsonl", "s3://b/c.parquet"):
        for r in rng.sample(range(10_000), 300):
            segments, prompts = rng.randint(1, 3), rng.randint(1, 3)
            for s in range(segments):
                for p in ["caption", "events", "music"][:prompts]:
                    if rng.random() < 0.9:
                        units += [(m, r, s, p, segments * prompts)] * (2 if rng.random() < 0.02 else 1)
    rng.shuffle(units)
    out = str(tmp_path / "out")
    for k in range(0, len(units), 97):
        chunk = units[k:k + 97]
        t = pa.table({"source_manifest": [u[0] for u in chunk], "source_row": pa.array([u[1] for u in chunk], pa.int64()),
                      "segment": pa.array([u[2] for u in chunk], pa.int32()), "prompt_id": [u[3] for u in chunk],
                      "segments": pa.array([{1: 1, 2: 2, 3: 3, 4: 2, 6: 3, 9: 3}[u[4]] for u in chunk], pa.int32()),
                      "prompts": pa.array([u[4] // {1: 1, 2: 2, 3: 3, 4: 2, 6: 3, 9: 3}[u[4]] for u in chunk], pa.int32()),
                      "error": pa.array([None] * len(chunk), pa.string())})
        commit(t, out, f"part-{k:06d}.parquet")
    done, partial, dup = naive(units)
    ledger = read(out)
    assert {(m, int(r)) for m, rs in ledger.done().items() for r in rs} == done
    assert {tuple(x.values()) for x in ledger.partial().to_pylist()} == partial
    assert ledger.counts()["duplicate_rows"] == dup and ledger.counts()["rows_out"] == len(done)
    assert all(np.all(np.diff(r) > 0) for r in ledger.done().values())  # sorted, once each


def test_error_kind():
    assert ledger_mod.error_kind("decode/missing: a.wav: no such file") == "decode/missing"


@pytest.fixture
def bucket(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("ledger-test")
    yield "s3://ledger-test"
    fs.rm("ledger-test", recursive=True)


def test_s3_commit_is_seen_after_an_earlier_listing(bucket):
    """s3fs caches listings in the filesystem object fsspec shares per process: a listing taken before the
    output existed (as the manifest glob does) must not hide the parts that workers commit afterwards."""
    import io

    import fsspec
    import pyarrow.parquet as pq
    import s3fs

    out = f"{bucket}/out"
    worker = s3fs.S3FileSystem(skip_instance_cache=True)  # another process's filesystem
    worker.pipe(f"{bucket}/manifests/a.jsonl", b"{}")
    fsspec.core.url_to_fs(bucket)[0].ls(bucket)  # cached in this process: a bucket without `out/`
    ledger = read(out)
    assert ledger.parts == {} and ledger.done() == {}
    buf = io.BytesIO()
    pq.write_table(rows(keys=[(0, 0, 1)]), buf)
    worker.pipe(f"{out}/part-a.parquet", buf.getvalue())
    ledger.update()
    assert len(ledger.parts) == 1 and ledger.counts()["rows_out"] == 1
    ledger.write_summary({"rows_out": 1})
    ledger.mark_success()
    fs, root = ledger_mod.output_fs(out)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root)) == ["_SUCCESS", "_summary.json", "part-a.parquet"]


def test_a_rewrites_rows_stand_for_the_rows_they_list(tmp_path):
    """A rewrite's row lists the input rows (a window's answers) it was made from: those are done, once each."""
    out = str(tmp_path / "out")
    t = rows(keys=[(0, 0, 1), (1, 0, 1)], prompt_ids=["rewrite", "rewrite"])
    t = t.append_column("input_part", pa.array([["p1", "p1", "p2"], ["p2"]], pa.list_(pa.string())))
    t = t.append_column("input_row", pa.array([[0, 1, 0], [1]], pa.list_(pa.int64())))
    commit(t, out, "part-a.parquet")
    ledger = read(out)
    assert {m: r.tolist() for m, r in ledger.done().items()} == {"p1": [0, 1], "p2": [0, 1]}
    counts = ledger.counts()
    assert (counts["rows_out"], counts["output_rows"], counts["duplicate_rows"]) == (4, 2, 0)
    commit(t.slice(1), out, "part-b.parquet")  # a window committed twice
    assert read(out).counts()["duplicate_rows"] == 1
