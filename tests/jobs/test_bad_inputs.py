"""Twenty-odd kinds of bad input mixed with good rows, through the real pipeline: the job finishes, every
input row comes out once, each bad row carries the expected error kind, each good row a caption."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

RATE = 16000


def tone(seconds, rate=RATE, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else x


def encoded(x, rate, fmt, subtype=None):
    b = io.BytesIO()
    sf.write(b, x, rate, format=fmt, subtype=subtype)
    return b.getvalue()


def corpus(d):
    """(manifest line, expected error kind or None for a good row, expected warning kind or None)."""
    files = {
        "trunc.wav": encoded(tone(2), RATE, "WAV")[:30000],
        "trunc.flac": encoded(tone(2), RATE, "FLAC")[:5000],
        "bad.ogg": encoded(tone(2), RATE, "OGG")[:3000],
        "trunc.mp3": encoded(tone(3), RATE, "MP3")[:4000],
        "zero.wav": encoded(np.zeros(0), RATE, "WAV"),
        "nan.wav": encoded(np.where(np.arange(RATE) == 100, np.nan, tone(1)), RATE, "WAV", "FLOAT"),
        "inf.wav": encoded(np.where(np.arange(RATE) == 100, np.inf, tone(1)), RATE, "WAV", "FLOAT"),
        "empty.wav": b"",
        "text.wav": b"this is a text file, not audio\n" * 10,
        "silence.wav": encoded(np.zeros(RATE), RATE, "WAV"),
        "toolong.wav": encoded(tone(61, 8000), 8000, "WAV"),
        "context.wav": encoded(tone(25), RATE, "WAV"),
        "ok-8k.wav": encoded(tone(1, 8000), 8000, "WAV"),
        "ok-96k.flac": encoded(tone(1, 96000), 96000, "FLAC"),
        "ok-6ch.wav": encoded(tone(1, RATE, 6), RATE, "WAV"),
        "ok-u8.wav": encoded(tone(1), RATE, "WAV", "PCM_U8"),
        "ok-24bit.flac": encoded(tone(1, 44100), 44100, "FLAC", "PCM_24"),
        "ok-f64.wav": encoded(tone(1, 22050), 22050, "WAV", "DOUBLE"),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "adir.wav").mkdir()
    os.mkfifo(d / "pipe.wav")  # opened, a named pipe waits for a writer: forever

    def row(audio, **kw):
        return json.dumps({"audio": audio, **kw})

    return [
        ("{not json", "read/bad_json", None),
        ("42", "read/bad_row", None),
        (row(""), "read/bad_audio", None),  # an empty path names no file
        (json.dumps({"id": "no-audio"}), "read/no_audio", None),
        (row(5), "read/bad_audio", None),
        ("[1, 2, 3]", "read/bad_row", None),
        (row("nope.wav"), "decode/missing", None),
        (row("adir.wav"), "decode/missing", None),
        (row("pipe.wav"), "decode/missing", None),
        (row("http://127.0.0.1:9/x.wav"), "decode/unreachable", None),
        (row("nosuchproto://bucket/x.wav"), "decode/unreachable", None),
        (row("empty.wav"), "decode/empty", None),
        (row("text.wav"), "decode/not_audio", None),
        (row("trunc.wav"), "decode/truncated", None),
        (row("trunc.flac"), "decode/truncated", None),  # the decoder fails at the last byte: cut short
        (row("bad.ogg"), "decode/corrupt", None),
        (row("trunc.mp3"), "decode/truncated", None),
        (row("zero.wav"), "decode/no_samples", None),
        (row("nan.wav"), "decode/nan", None),
        (row("inf.wav"), "decode/nan", None),
        (row("toolong.wav"), "decode/too_long", None),
        (row("context.wav"), "generate/too_long", None),
        (row("silence.wav"), None, "decode/silent"),
        *[(row(n), None, None) for n in files if n.startswith("ok-")],
    ]


INLINE = [  # a parquet shard with audio inline, as `datasets` exports its Audio feature: (bytes, path)
    ({"bytes": encoded(tone(1, 22050), 22050, "FLAC"), "path": "inline-ok.flac"}, None),
    ({"bytes": encoded(tone(1), RATE, "WAV"), "path": None}, None),
    ({"bytes": b"garbage bytes, not audio", "path": "inline-bad.wav"}, "decode/not_audio"),
    ({"bytes": b"", "path": "inline-empty.wav"}, "decode/empty"),
]


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq_

    d = tmp_path_factory.mktemp("bad")
    cases = corpus(d)
    (d / "manifest.jsonl").write_text("".join(line + "\n" for line, _, _ in cases))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq_.write_table(pa.table({"audio": pa.array([a for a, _ in INLINE], struct)}), d / "inline.parquet")
    out = str(d / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.caption", "--config", "configs/caption-demo.yaml",
         f"input=[{d / 'manifest.jsonl'}, {d / 'inline.parquet'}]", "--output", out, "sampling.max_tokens=6",
         "engine.max_model_len=512", "decode.max_duration_s=60", "errors.max_engine_error_pct=50"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for f in sorted(os.listdir(out)) if f.endswith(".parquet") for r in pq.read_table(os.path.join(out, f)).to_pylist()]
    with open(os.path.join(out, "_summary.json")) as f:
        summary = json.load(f)
    jsonl = str(d / "manifest.jsonl")
    inline = [r for r in rows if r["source_manifest"] != jsonl]
    rows = [r for r in rows if r["source_manifest"] == jsonl]
    return {"cases": cases, "rows": rows, "inline": inline, "summary": summary, "dir": d}


def test_there_are_at_least_twenty_kinds_of_bad_input(run):
    bad = {line for line, err, warn in run["cases"] if err or warn} | {str(a) for a, err in INLINE if err}
    assert len(bad) >= 20


def test_every_row_comes_out_once_with_the_expected_kind(run):
    by_row = {r["source_row"]: r for r in run["rows"]}
    assert sorted(by_row) == list(range(len(run["cases"])))
    assert len(run["rows"]) == len(run["cases"])  # no clip here is longer than a window
    for i, (line, err, warn) in enumerate(run["cases"]):
        r = by_row[i]
        if err is None:
            assert r["error"] is None and r["caption"], (line, r["error"])
        else:
            assert r["error"] and r["error"].split(":", 1)[0] == err, (line, r["error"])
            assert r["caption"] is None
        assert (r["warning"] or "").split(":", 1)[0] == (warn or ""), (line, r["warning"])


def test_error_messages_name_the_file_and_the_reason(run):
    errors = {r["audio"]: r["error"] for r in run["rows"] if r["error"]}
    d = run["dir"]
    assert errors[f"{d}/nope.wav"] == f"decode/missing: {d}/nope.wav: no such file"
    assert errors[f"{d}/trunc.wav"].startswith(f"decode/truncated: {d}/trunc.wav: file ends early")
    assert "exceeds decode.max_duration_s=60" in errors[f"{d}/toolong.wav"]
    assert "maximum model length" in errors[f"{d}/context.wav"]


def test_inline_audio_in_a_parquet_shard_is_decoded_without_a_file(run):
    rows = sorted(run["inline"], key=lambda r: r["source_row"])
    assert [r["source_row"] for r in rows] == list(range(len(INLINE)))
    for r, (audio, err) in zip(rows, INLINE):
        assert (r["error"] or "").split(":", 1)[0] == (err or ""), r["error"]
        assert (r["caption"] is not None) == (err is None)
        assert "audio_bytes" not in r  # the audio is not copied into the output
    assert rows[0]["audio"] == "inline-ok.flac" and rows[0]["duration_s"] == pytest.approx(1.0)
    assert rows[1]["audio"].endswith("inline.parquet#1")  # no path: provenance is manifest#row


def test_summary_counts_errors_by_kind(run):
    s = run["summary"]
    n = len(run["cases"]) + len(INLINE)
    assert s["rows_in"] == s["rows_out"] == n
    expected = {}
    for err in [err for _, err, _ in run["cases"]] + [err for _, err in INLINE]:
        if err:
            expected[err] = expected.get(err, 0) + 1
    assert s["errors_by_kind"] == expected
    assert s["rows_ok"] == n - sum(expected.values())
