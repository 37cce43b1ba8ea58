"""The write stage: finalized columns, atomic commits, and the committed units of a half-written row dropped."""
from datetime import datetime, timezone

import pyarrow as pa

from operators import write
from tests.operators.test_ledger import rows

WHEN = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_finalize_drops_working_columns_and_adds_provenance():
    t = rows().append_column("waveform", pa.array([[0.0]]))
    t = write.finalize(t, column="caption", model="m", sampling="{}", run_id="run", created_at=WHEN)
    assert "waveform" not in t.column_names
    assert t.column_names[:5] == ["output_id", "id", "prompt_id", "caption", "error"]
    assert t.column("output_id").to_pylist() == ["r0/caption/0"]
    assert t.column("run_id").to_pylist() == ["run"]


def test_write_batch_drops_what_is_committed(tmp_path):
    committed = pa.table({"source_manifest": ["m.jsonl"], "source_row": pa.array([1], pa.int64()),
                          "segment": pa.array([0], pa.int32()), "prompt_id": ["caption"]})
    out = str(tmp_path / "out")
    kept = write.write_batch(rows(keys=[(1, 0, 2), (1, 1, 2), (2, 0, 1)]), out, "run", committed=committed,
                             column="caption", model="m", sampling="{}", created_at=WHEN)
    assert kept.column("rows").to_pylist() == [2]
    import pyarrow.parquet as pq

    written = pq.read_table(kept.column("file")[0].as_py())
    assert sorted(zip(written["source_row"].to_pylist(), written["segment"].to_pylist())) == [(1, 1), (2, 0)]
    nothing = write.write_batch(rows(keys=[(1, 0, 2)]), out, "run", committed=committed, column="caption",
                                model="m", sampling="{}", created_at=WHEN)
    assert nothing.num_rows == 0


def test_commit_leaves_only_complete_files(tmp_path):
    path = write.commit(rows(), str(tmp_path / "out"), "part-a.parquet")
    assert path.endswith("/part-a.parquet")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-a.parquet"]


def test_audio_is_one_uri_or_the_json_list_of_several():
    audio = pa.array([["a.wav"], ["b.wav", "c.wav"], None], pa.list_(pa.string()))
    assert write.audio_text(audio).to_pylist() == ["a.wav", '["b.wav", "c.wav"]', None]
    assert write.audio_text(audio.slice(0, 1)).to_pylist() == ["a.wav"]


def test_split_by_commits_one_file_per_value(tmp_path):
    t = rows(keys=[(0, 0, 1), (1, 0, 1), (2, 0, 1)]).append_column("split", pa.array(["train", "test", "train"]))
    out = write.write_batch(t, str(tmp_path / "out"), "run", column="caption", model="m", sampling="{}",
                            created_at=WHEN, split_by="split")
    files = dict(zip((f.rsplit("-", 1)[-1] for f in out.column("file").to_pylist()), out.column("rows").to_pylist()))
    assert files == {"train.parquet": 2, "test.parquet": 1}
