"""Atomic commits, what a resume counts as done, and the summary; on a local disk and on S3 (moto server)."""
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from operators import write


def rows(manifest="m.jsonl", keys=((0, 0, 1),), error=None, prompt_ids=None):
    """Output rows at (source_row, segment, segments) keys, each asked one of `prompt_ids`."""
    n = len(keys)
    pids = prompt_ids or ["caption"] * n
    return pa.table({"id": [f"r{r}" for r, _, _ in keys], "caption": ["x"] * n, "error": [error] * n,
                     "source_manifest": [manifest] * n, "source_row": [r for r, _, _ in keys],
                     "segment": [s for _, s, _ in keys], "segments": [k for _, _, k in keys],
                     "prompt_id": pids, "prompts": [len(set(pids))] * n, "run_id": ["run"] * n,
                     "segment_start_s": [0.0] * n, "segment_end_s": [1.0] * n,
                     "prompt_tokens": [10] * n, "output_tokens": [3] * n,
                     "waveform": [[0.0]] * n})


def test_finalize_drops_working_columns_and_adds_provenance():
    t = write.finalize(rows(), column="caption", model="m", sampling="{}", run_id="run",
                       created_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert "waveform" not in t.column_names
    assert t.column_names[:5] == ["output_id", "id", "prompt_id", "caption", "error"]
    assert t.column("output_id").to_pylist() == ["r0/caption/0"]
    assert t.column("run_id").to_pylist() == ["run"]


def test_done_rows_needs_every_window():
    t = rows(keys=[(0, 0, 1), (1, 0, 3), (1, 2, 3), (2, 0, 2), (2, 1, 2)])
    assert write.done_rows(t) == {"m.jsonl": [0, 2]}
    assert write.done_rows(None) == {}


def test_done_rows_needs_every_prompt():
    t = rows(keys=[(0, 0, 1), (0, 0, 1), (1, 0, 1)], prompt_ids=["caption", "events", "caption"])
    t = t.set_column(t.column_names.index("prompts"), "prompts", pa.array([2, 2, 2]))
    assert write.done_rows(t) == {"m.jsonl": [0]}


def test_resume_keeps_the_committed_half_of_a_row():
    t = rows(keys=[(0, 0, 1), (0, 0, 1), (1, 0, 2)], prompt_ids=["caption", "events", "caption"])
    t = t.set_column(t.column_names.index("prompts"), "prompts", pa.array([2, 2, 1]))
    done, partial = write.resume(t)
    assert done == {"m.jsonl": [0]}
    assert partial == {write.unit("m.jsonl", 1, 0, "caption")}
    batch = rows(keys=[(1, 0, 2), (1, 1, 2)])
    kept = write.write_batch(batch, "memory://resume-test", "run", committed=partial, column="caption",
                             model="m", sampling="{}", created_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert kept.column("rows").to_pylist() == [1]


def test_error_kind():
    assert write.error_kind("decode/missing: a.wav: no such file") == "decode/missing"


def test_committed_deletes_leftovers_and_reads_parts(tmp_path):
    out = str(tmp_path / "out")
    write.commit(rows(keys=[(0, 0, 1)]), out, "part-a.parquet")
    (tmp_path / "out" / ".part-b.parquet.tmp").write_bytes(b"half a file")
    table, files = write.committed(out)
    assert [f.rsplit("/", 1)[-1] for f in files] == ["part-a.parquet"]
    assert table.column("source_row").to_pylist() == [0]
    assert not (tmp_path / "out" / ".part-b.parquet.tmp").exists()


def test_summary_counts_duplicates_and_errors(tmp_path):
    out = str(tmp_path / "out")
    write.commit(rows(keys=[(0, 0, 1), (1, 0, 1)]), out, "part-a.parquet")
    write.commit(rows(keys=[(1, 0, 1)], error="decode/corrupt: b.wav: bad header"), out, "part-b.parquet")
    s = write.summarize(out, rows_in=2, extra={})
    assert (s["rows_out"], s["output_rows"], s["duplicate_rows"]) == (2, 3, 1)
    assert s["errors_by_kind"] == {"decode/corrupt": 1}


@pytest.fixture
def bucket(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("write-test")
    yield "s3://write-test"
    fs.rm("write-test", recursive=True)


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
    assert write.committed(out) == (None, [])
    buf = io.BytesIO()
    pq.write_table(rows(keys=[(0, 0, 1)]), buf)
    worker.pipe(f"{out}/part-a.parquet", buf.getvalue())
    table, files = write.committed(out)
    assert len(files) == 1 and table.num_rows == 1
    assert write.summarize(out, rows_in=1, extra={})["rows_out"] == 1
    write.mark_success(out)
    fs, root = write.output_fs(out)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root)) == ["_SUCCESS", "_summary.json", "part-a.parquet"]
