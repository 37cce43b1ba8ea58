import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import read


def _chunks(manifest, chunk=2, done=()):
    return read.chunks_of(read.index(manifest, chunk), chunk, 1, np.array(sorted(done), np.int64)).to_pylist()


def _rows(manifest, chunk=2, skip=()):
    """All rows, read chunk by chunk as the read tasks do."""
    out = []
    for c in _chunks(manifest, chunk):
        t = read.read_chunk(c["manifest"], c["start"], c["stop"], c["offset"], set(skip))
        out += t.to_pylist() if t is not None else []
    return out


def _count(manifest, chunk=2):
    return int(read.index(manifest, chunk)["rows"].sum())


def test_jsonl_rows_keep_extra_columns_and_resolve_relative_audio(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": 7, "audio": "a.wav", "lang": "en"}) + "\n\n" +
                 json.dumps({"audio": "/abs/b.flac", "meta": {"k": [1, 2]}}) + "\n")
    rows = _rows(str(m), chunk=10)
    assert [r["id"] for r in rows][0] == "7"
    assert rows[0]["audio"] == rows[0]["audio_uris"] == [f"{tmp_path}/a.wav"]
    assert rows[0]["lang"] == "en" and rows[1]["lang"] is None
    assert rows[1]["audio"] == ["/abs/b.flac"] and json.loads(rows[1]["meta"]) == {"k": [1, 2]}  # nested: JSON
    assert all(r["error"] is None for r in rows)
    assert [r["source_row"] for r in rows] == [0, 2]  # positions are line numbers, blank lines skipped
    assert _count(str(m)) == 2


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


def test_chunks_seek_to_their_lines_and_skip_done_rows(tmp_path):
    m = tmp_path / "m.jsonl"
    lines = [json.dumps({"id": f"r{i}", "audio": f"{i}.wav", "text": "é" * i}) for i in range(7)]
    lines.insert(3, "")
    m.write_text("\n".join(lines) + "\n")
    chunks = _chunks(str(m), 3)
    assert [(c["start"], c["stop"], c["rows"]) for c in chunks] == [(0, 3, 3), (3, 6, 2), (6, 8, 2)]
    raw = m.read_bytes().splitlines(keepends=True)
    assert [c["offset"] for c in chunks] == [len(b"".join(raw[:c["start"]])) for c in chunks]  # seek targets
    assert [r["id"] for r in _rows(str(m), 3)] == [f"r{i}" for i in range(7)]
    assert [r["id"] for r in _rows(str(m), 3, skip={0, 4, 7})] == ["r1", "r2", "r4", "r5"]


def test_plan_leaves_out_finished_chunks(tmp_path, ray_driver):
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps({"audio": f"{i}.wav"}) + "\n" for i in range(5)))
    todo, rows_in, size = read.plan([str(m)], 2, 100, 1000, {str(m): np.array([0, 1, 2])})
    assert (rows_in, size) == (5, 2)
    assert [(c["start"], c["done"]) for c in todo.to_pylist()] == [(2, [2]), (4, [])]


def test_plan_bounds_the_number_of_read_tasks(tmp_path, ray_driver):
    """Chunks grow with the manifests so that read tasks number about `blocks`, up to `max_rows` rows each,
    and never shrink below the grain; two manifests' chunks never mix."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.parquet"
    a.write_text("".join(json.dumps({"audio": f"{i}.wav"}) + "\n" for i in range(1000)))
    pq.write_table(pa.table({"audio": [f"{i}.wav" for i in range(600)]}), b, row_group_size=128)
    chunks, rows_in, size = read.plan([str(a), str(b)], 4, 8, 10_000, {})
    assert (rows_in, size) == (1600, 200) and chunks.num_rows == 5 + 3
    assert [r for c in chunks.to_pylist() for r in range(c["start"], c["stop"])] == list(range(1000)) + list(range(600))
    assert read.plan([str(a), str(b)], 4, 8, 64, {})[2] == 64  # capped at max_rows
    assert read.plan([str(a)], 4, 10_000, 64, {})[2] == 4  # never below the grain
    done = {str(a): np.arange(1000), str(b): np.arange(0, 600, 2)}
    chunks, _, _ = read.plan([str(a), str(b)], 4, 8, 10_000, done)
    assert [c["manifest"] for c in chunks.to_pylist()] == [str(b)] * 3  # a is done; b's odd rows are not
    assert sum(len(c["done"]) for c in chunks.to_pylist()) == 300


def test_parquet_manifest_in_chunks_across_row_groups(tmp_path):
    p = tmp_path / "m.parquet"
    pq.write_table(pa.table({"audio": [f"{i}.wav" for i in range(10)]}), p, row_group_size=4)
    assert [r["source_row"] for r in _rows(str(p), 3)] == list(range(10))


def test_parquet_manifest(tmp_path):
    p = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "audio": ["x.wav", "s3://b/y.wav"], "n": [1, 2]}), p)
    rows = _rows(str(p))
    assert [r["audio"] for r in rows] == [[f"{tmp_path}/x.wav"], ["s3://b/y.wav"]]
    assert [r["n"] for r in rows] == [1, 2]
    assert _count(str(p)) == 2


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


def test_relative_audio_resolves_against_the_manifest_folder():
    assert read.resolve("a.wav", "s3://b/manifests/m.jsonl") == "s3://b/manifests/a.wav"
    assert read.resolve("../audio/a.wav", "s3://b/manifests/m.jsonl") == "s3://b/audio/a.wav"
    assert read.resolve("x/a.wav", "/data/m.jsonl") == "/data/x/a.wav"
    assert read.resolve("a.wav", "m.jsonl") == "a.wav"
    assert read.resolve("gs://o/a.wav", "s3://b/m.jsonl") == "gs://o/a.wav"


def test_hf_audio_struct_rows_carry_inline_bytes(tmp_path):
    p = tmp_path / "m.parquet"
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    audio = [{"bytes": b"RIFF..", "path": "a.wav"}, {"bytes": None, "path": "b.wav"}, {"bytes": b"x", "path": None}]
    pq.write_table(pa.table({"audio": pa.array(audio, struct)}), p)
    rows = _rows(str(p), chunk=10)
    assert [(r["audio"], r["audio_bytes"]) for r in rows] == [
        (["a.wav"], [b"RIFF.."]), ([f"{tmp_path}/b.wav"], [None]), ([f"{p}#2"], [b"x"])]
    assert all(r["error"] is None for r in rows)


def test_dataflow_and_openai_rows_as_they_are(assets):
    """The DataFlow-MM guide's lines and OpenAI chat rows: audio resolved against the manifest's folder."""
    import glob
    import json
    import os

    folder = os.path.join(assets["aqa"], "data")
    clips = os.path.normpath(os.path.join(folder, "../example_data/audio_aqa_pipeline"))
    guide = _rows(os.path.join(folder, "sample_data.jsonl"), chunk=10)
    assert [r["audio_uris"] for r in guide] == [[f"{clips}/test_1.wav"], [f"{clips}/test_2.wav"]]
    assert json.loads(guide[0]["chat"])[0]["content"][-1] == {"type": "text", "text": "Transcribe the audio into Chinese."}
    rows = [r for m in sorted(glob.glob(f"{folder}/*.jsonl")) for r in _rows(m, chunk=10)]
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows]
    by_id = {r["id"]: r for r in rows}
    assert by_id["two-audios"]["audio_uris"] == [f"{clips}/test_2.wav", f"{clips}/test_3.flac"]
    inline = by_id["oa-input-audio"]
    assert inline["audio_bytes"][0][:4] == b"RIFF" and inline["audio_uris"] == [f"{folder}/messages.jsonl#3"]
    assert [m["role"] for m in json.loads(by_id["oa-multi-turn"]["chat"])] == ["user", "assistant", "user"]


def test_unanswerable_conversations_are_error_rows(tmp_path):
    import json

    m = tmp_path / "m.jsonl"
    lines = [{"audio": ["a.wav"], "conversation": [{"from": "human", "value": "<audio><audio>?"}]},
             {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]},
                           {"role": "assistant", "content": "done"}]},
             {"messages": [{"role": "user", "content": "no audio here"}]},
             {"audio": 5}]
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    errs = [r["error"] for r in _rows(str(m), chunk=10)]
    assert errs == [f"read/bad_conversation: {m}:1: 2 <audio> markers but 1 audio files",
                    f"read/bad_conversation: {m}:2: the last turn is the assistant's; nothing to answer",
                    f"read/no_audio: {m}:3: row has no 'audio' path and its messages no audio item",
                    f"read/bad_audio: {m}:4: 'audio' must be a path, a list of paths or an {{bytes, path}} struct"]
