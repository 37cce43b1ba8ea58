import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import read


def _rows(manifest):
    return [r for t in read.read_manifest(manifest) for r in t.to_pylist()]


def test_jsonl_rows_keep_extra_columns_and_resolve_relative_audio(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": 7, "audio": "a.wav", "lang": "en"}) + "\n\n" +
                 json.dumps({"audio": "/abs/b.flac", "meta": {"k": [1, 2]}}) + "\n")
    rows = _rows(str(m))
    assert [r["id"] for r in rows][0] == "7"
    assert rows[0]["audio"] == f"{tmp_path}/a.wav"
    assert rows[0]["lang"] == "en" and rows[1]["lang"] is None
    assert rows[1]["audio"] == "/abs/b.flac" and rows[1]["meta"] == {"k": [1, 2]}
    assert all(r["error"] is None for r in rows)
    assert [r["source_row"] for r in rows] == [0, 2]  # positions are line numbers, blank lines skipped
    assert read.count_rows(str(m)) == 2


def test_derived_ids_are_stable_and_distinct(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps({"audio": f"{i}.wav"}) + "\n" for i in range(3)))
    first, again = _rows(str(m)), _rows(str(m))
    ids = [r["id"] for r in first]
    assert ids == [r["id"] for r in again]
    assert len(set(ids)) == 3
    assert ids[1] == read.derive_id(str(m), 1)


def test_bad_lines_become_error_rows(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav"}\nnot json\n{"id": "x"}\n[1, 2]\n{"audio": 5}\n')
    rows = _rows(str(m))
    assert len(rows) == 5
    errs = [r["error"] for r in rows]
    assert errs[0] is None
    assert errs[1].startswith(f"read/bad_json: {m}:2:")
    assert errs[2] == f"read/no_audio: {m}:3: row has no 'audio' path"
    assert errs[3].startswith("read/bad_row:") and errs[4].startswith("read/bad_audio:")


def test_mixed_types_in_a_column_are_kept_as_json(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav", "x": 1}\n{"audio": "b.wav", "x": "one"}\n')
    assert [r["x"] for r in _rows(str(m))] == ["1", '"one"']


def test_parquet_manifest(tmp_path):
    p = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "audio": ["x.wav", "s3://b/y.wav"], "n": [1, 2]}), p)
    rows = _rows(str(p))
    assert [r["audio"] for r in rows] == [f"{tmp_path}/x.wav", "s3://b/y.wav"]
    assert [r["n"] for r in rows] == [1, 2]
    assert read.count_rows(str(p)) == 2


def test_expand_globs_lists_and_formats(tmp_path):
    for name in ["b.jsonl", "a.jsonl", "c.parquet"]:
        (tmp_path / name).write_text("")
    assert read.expand(str(tmp_path / "*.jsonl")) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert read.expand([str(tmp_path / "c.parquet"), str(tmp_path / "a.jsonl")]) == \
        [str(tmp_path / "c.parquet"), str(tmp_path / "a.jsonl")]
    assert read.expand(str(tmp_path / "none-*.jsonl")) == []
    (tmp_path / "d.csv").write_text("")
    with pytest.raises(ValueError, match="unsupported manifest format"):
        read.expand(str(tmp_path / "d.csv"))
