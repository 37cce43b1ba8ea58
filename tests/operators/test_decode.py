import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from operators.decode import Decode, load, windows
from operators.stage import audio_arrays


def _tone(sr, secs, freq, channels):
    t = np.arange(int(sr * secs)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1)


def _peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x))
    return np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()]


def test_44k_stereo_becomes_16k_mono_of_the_right_length(tmp_path):
    path = tmp_path / "s.flac"
    sf.write(path, _tone(44100, 2.5, 1000.0, 2), 44100)
    wave, duration = load(str(path), 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert duration == pytest.approx(2.5)
    assert len(wave) == pytest.approx(2.5 * 16000, abs=1)
    assert _peak_hz(wave, 16000) == pytest.approx(1000.0, abs=1)  # pitch survives: the rate is right


def test_stereo_is_averaged(tmp_path):
    x = np.zeros((1600, 2), np.float32)
    x[:, 0] = 0.5
    sf.write(tmp_path / "lr.wav", x, 16000, subtype="FLOAT")
    wave, _ = load(str(tmp_path / "lr.wav"), 16000)
    assert np.allclose(wave, 0.25)


def test_hard_windows_cover_every_sample():
    wave = np.ones(16000 * 65, np.float32)
    assert windows(wave, 16000, 30.0, 0) == [(0, 480000), (480000, 960000), (960000, 1040000)]
    assert windows(wave[:100], 16000, 30.0, 0) == [(0, 100)]
    assert windows(wave[:0], 16000, 30.0, 5.0) == [(0, 0)]


def test_windows_cut_at_the_quietest_point_near_the_end():
    rate = 1000
    wave = np.ones(rate * 70, np.float32)
    wave[27_000:27_100] = 0  # a pause 3 s before the first window's end
    spans = windows(wave, rate, 30.0, 5.0)
    assert spans[0] == (0, 27_010)  # middle of the first silent 20 ms frame
    assert spans[1][0] == 27_010 and spans[-1][1] == len(wave)
    assert all(b - a <= 30 * rate for a, b in spans)
    assert all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))


def test_overlapping_windows_repeat_the_seconds_before_each_cut():
    wave = np.ones(16000 * 65, np.float32)
    spans = windows(wave, 16000, 30.0, 0, overlap_s=2.0)
    assert spans == [(0, 480000), (448000, 928000), (896000, 1040000)]


def _decode(**kw):
    cfg = dict(sample_rate=16000, window_s=30.0, long_audio="split", max_duration_s=3600.0, cut_search_s=0.0,
               overlap_s=0.0) | kw
    return Decode(**cfg)


def batch(uris, errors=None, inline=None, **extra):
    """A read-stage batch: one audio per row unless a row's uris are a list."""
    lists = [u if isinstance(u, list) or u is None else [u] for u in uris]
    return pa.table({"audio_uris": pa.array(lists, pa.list_(pa.string())),
                     "audio_bytes": pa.array(inline or [None if u is None else [None] * len(u) for u in lists],
                                             pa.list_(pa.binary())),
                     "error": pa.array(errors or [None] * len(uris), pa.string()), **extra})


def clips(out):
    return [None if r is None else [len(c) for c in r] for r in audio_arrays(out.column("waveform"))]


def test_long_clip_is_split_into_windows_with_times(tmp_path):
    sf.write(tmp_path / "long.wav", _tone(8000, 65, 300.0, 1), 8000)
    out = _decode()(batch([str(tmp_path / "long.wav")], id=["L"]))
    assert out.column("id").to_pylist() == ["L"] * 3
    assert out.column("segment").to_pylist() == [0, 1, 2]
    assert out.column("segment_start_s").to_pylist() == [0.0, 30.0, 60.0]
    assert out.column("segment_end_s").to_pylist() == [30.0, 60.0, 65.0]
    assert clips(out) == [[480000], [480000], [80000]]


def test_long_clip_refused_when_configured(tmp_path):
    sf.write(tmp_path / "long.wav", _tone(8000, 31, 300.0, 1), 8000)
    out = _decode(long_audio="error")(batch([str(tmp_path / "long.wav")]))
    assert out.column("error")[0].as_py().startswith(f"decode/too_long: {tmp_path}/long.wav: 31.0 s exceeds")


def test_bad_files_become_error_rows_and_good_rows_survive(tmp_path):
    sf.write(tmp_path / "ok.wav", _tone(16000, 1, 440.0, 1), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_bytes(b"hello, I am not audio at all")
    uris = [str(tmp_path / n) for n in ["ok.wav", "missing.wav", "empty.wav", "text.wav"]]
    out = _decode()(batch(uris))
    errs = out.column("error").to_pylist()
    assert errs[0] is None
    assert errs[1] == f"decode/missing: {uris[1]}: no such file"
    assert errs[2] == f"decode/empty: {uris[2]}: file is empty (0 bytes)"
    assert errs[3].startswith(f"decode/not_audio: {uris[3]}:")
    assert out.column("duration_s").to_pylist()[0] == pytest.approx(1.0)


def test_rows_with_earlier_errors_pass_through(tmp_path):
    out = _decode()(batch([None], errors=["read/bad_json: m.jsonl:1: oops"]))
    assert out.column("error").to_pylist() == ["read/bad_json: m.jsonl:1: oops"]
    assert clips(out) == [None]


def test_inline_bytes_are_decoded_instead_of_fetching(tmp_path):
    import io

    buf = io.BytesIO()
    sf.write(buf, _tone(8000, 2, 500.0, 1), 8000, format="WAV")
    out = _decode()(batch(["nowhere.wav", "empty.wav"], inline=[[buf.getvalue()], [b""]]))
    assert out.column("error").to_pylist() == [None, "decode/empty: empty.wav: inline audio is empty (0 bytes)"]
    assert clips(out)[0] == [32000]


def test_a_row_with_several_audios_keeps_them_together(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(16000, 1, 440.0, 1), 16000)
    sf.write(tmp_path / "b.flac", _tone(44100, 2, 440.0, 2), 44100)
    sf.write(tmp_path / "long.wav", _tone(8000, 31, 300.0, 1), 8000)
    a, b, long = (str(tmp_path / n) for n in ["a.wav", "b.flac", "long.wav"])
    out = _decode()(batch([[a, b], [a, long]]))
    assert clips(out) == [[16000, 32000], None]
    assert out.column("duration_s").to_pylist()[0] == pytest.approx(3.0)
    assert out.column("error").to_pylist()[1].startswith(f"decode/too_long: {long}: 31.0 s exceeds the model's 30 s "
                                                         "window; a row with several audio items is not cut")
