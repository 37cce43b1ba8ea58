import json

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from operators import decode as dec
from operators.config import DecodeCfg
from operators.decode import Decode, load, quietest, windows
from operators.models import ModelSpec
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
    assert windows(16000 * 65, 16000, 30.0, 0) == [(0, 480000), (480000, 960000), (960000, 1040000)]
    assert windows(100, 16000, 30.0, 0) == [(0, 100)]
    assert windows(0, 16000, 30.0, 5.0, cut=quietest(np.zeros(0), 320)) == [(0, 0)]


def test_windows_cut_at_the_quietest_point_near_the_end():
    rate = 1000
    wave = np.ones(rate * 70, np.float32)
    wave[27_000:27_100] = 0  # a pause 3 s before the first window's end
    energy = np.square(wave).reshape(-1, 20).mean(axis=1)
    spans = windows(len(wave), rate, 30.0, 5.0, cut=quietest(energy, 20))
    assert spans[0] == (0, 27_010)  # middle of the first silent 20 ms frame
    assert spans[1][0] == 27_010 and spans[-1][1] == len(wave)
    assert all(b - a <= 30 * rate for a, b in spans)
    assert all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))


def test_overlapping_windows_repeat_the_seconds_before_each_cut():
    spans = windows(16000 * 65, 16000, 30.0, 0, overlap_s=2.0)
    assert spans == [(0, 480000), (448000, 928000), (896000, 1040000)]


def test_vad_cut_is_the_middle_of_the_longest_pause():
    speech = [(0, 20_000), (21_000, 26_000), (28_000, 40_000)]  # pauses of 1000 and 2000 samples
    cut = dec.longest_pause(speech, fallback=lambda lo, hi: -1)
    assert cut(15_000, 30_000) == 27_000
    assert cut(22_000, 25_000) == -1  # all speech: the fallback (the quietest point) decides
    assert cut(38_000, 50_000) == 45_000  # after the last speech


def test_speech_seconds_per_span():
    speech = [(0, 16_000), (32_000, 40_000)]
    assert dec.speech_seconds([(0, 24_000), (24_000, 48_000)], speech, 16000) == [1.0, 0.5]
    assert dec.speech_seconds([(0, 10)], [], 16000) == [0.0]


SPEC = ModelSpec(sample_rate=16000, window_s=30.0)


def _decode(**kw):
    """The decode stage as a job builds it, from a `decode` config section (hard cuts unless asked)."""
    return Decode(**dec.options(DecodeCfg(**{"cut_search_s": 0.0, **kw}), SPEC))


def run(stage, table):
    blocks = list(stage(table))
    return pa.concat_tables(blocks) if blocks else None


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
    out = run(_decode(), batch([str(tmp_path / "long.wav")], id=["L"]))
    assert out.column("id").to_pylist() == ["L"] * 3
    assert out.column("segment").to_pylist() == [0, 1, 2]
    assert out.column("segment_start_s").to_pylist() == [0.0, 30.0, 60.0]
    assert out.column("segment_end_s").to_pylist() == [30.0, 60.0, 65.0]
    assert clips(out) == [[480000], [480000], [80000]]


def test_long_clip_refused_when_configured(tmp_path):
    sf.write(tmp_path / "long.wav", _tone(8000, 31, 300.0, 1), 8000)
    out = run(_decode(long_audio="error"), batch([str(tmp_path / "long.wav")]))
    assert out.column("error")[0].as_py().startswith(f"decode/too_long: {tmp_path}/long.wav: 31.0 s exceeds")


def test_bad_files_become_error_rows_and_good_rows_survive(tmp_path):
    sf.write(tmp_path / "ok.wav", _tone(16000, 1, 440.0, 1), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_bytes(b"hello, I am not audio at all")
    uris = [str(tmp_path / n) for n in ["ok.wav", "missing.wav", "empty.wav", "text.wav"]]
    out = run(_decode(), batch(uris))
    errs = out.column("error").to_pylist()
    assert errs[0] is None
    assert errs[1] == f"decode/missing: {uris[1]}: no such file"
    assert errs[2] == f"decode/empty: {uris[2]}: file is empty (0 bytes)"
    assert errs[3].startswith(f"decode/not_audio: {uris[3]}:")
    assert out.column("duration_s").to_pylist()[0] == pytest.approx(1.0)


def test_rows_with_earlier_errors_pass_through(tmp_path):
    out = run(_decode(), batch([None], errors=["read/bad_json: m.jsonl:1: oops"]))
    assert out.column("error").to_pylist() == ["read/bad_json: m.jsonl:1: oops"]
    assert clips(out) == [None]


def test_inline_bytes_are_decoded_instead_of_fetching(tmp_path):
    import io

    buf = io.BytesIO()
    sf.write(buf, _tone(8000, 2, 500.0, 1), 8000, format="WAV")
    out = run(_decode(), batch(["nowhere.wav", "empty.wav"], inline=[[buf.getvalue()], [b""]]))
    assert out.column("error").to_pylist() == [None, "decode/empty: empty.wav: inline audio is empty (0 bytes)"]
    assert clips(out)[0] == [32000]


def test_a_row_with_several_audios_keeps_them_together(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(16000, 1, 440.0, 1), 16000)
    sf.write(tmp_path / "b.flac", _tone(44100, 2, 440.0, 2), 44100)
    sf.write(tmp_path / "long.wav", _tone(8000, 31, 300.0, 1), 8000)
    a, b, long = (str(tmp_path / n) for n in ["a.wav", "b.flac", "long.wav"])
    out = run(_decode(), batch([[a, b], [a, long]]))
    assert clips(out) == [[16000, 32000], None]
    assert out.column("duration_s").to_pylist()[0] == pytest.approx(3.0)
    assert out.column("error").to_pylist()[1].startswith(f"decode/too_long: {long}: 31.0 s exceeds the model's 30 s "
                                                         "window; a row with several audio items is not cut")


FORMATS = [("wav", "WAV", None, 8000), ("flac", "FLAC", None, 44100), ("ogg", "OGG", "VORBIS", 48000),
           ("mp3", "MP3", "MPEG_LAYER_III", 44100), ("w64", "W64", "PCM_24", 22050)]


@pytest.mark.parametrize("ext,fmt,subtype,rate", FORMATS)
def test_streamed_decode_equals_whole_file_decode(tmp_path, ext, fmt, subtype, rate):
    """Block by block through soxr's stream resampler = one soxr.resample of the whole decoded file."""
    import soxr

    path = str(tmp_path / f"a.{ext}")
    t = np.arange(int(rate * 7.3)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    sf.write(path, np.stack([x, 0.6 * x], axis=1), rate, format=fmt, subtype=subtype)
    whole, src = sf.read(path, dtype="float32", always_2d=True)
    reference = soxr.resample(whole.mean(axis=1), src, 16000, quality="HQ")
    streamed, duration = load(path, 16000)
    assert duration == pytest.approx(len(whole) / src)
    assert abs(len(streamed) - len(reference)) <= 1
    n = min(len(streamed), len(reference))
    assert np.abs(streamed[:n] - reference[:n]).max() < 1e-3


def test_a_clip_longer_than_the_spill_buffer_goes_to_disk_with_the_same_windows(tmp_path):
    sf.write(tmp_path / "long.wav", _tone(16000, 95, 300.0, 1), 16000)
    uri = str(tmp_path / "long.wav")
    in_memory = run(_decode(), batch([uri]))
    spilled = run(_decode(spill_mb=0.5), batch([uri]))
    assert clips(in_memory) == clips(spilled) == [[480000], [480000], [480000], [80000]]
    a, b = audio_arrays(in_memory.column("waveform")), audio_arrays(spilled.column("waveform"))
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))


def test_a_long_clip_leaves_in_bounded_blocks(tmp_path):
    sf.write(tmp_path / "long.wav", _tone(16000, 95, 300.0, 1), 16000)
    uri = str(tmp_path / "long.wav")
    blocks = list(_decode(output_block_mb=4.0)(batch([uri])))  # 30 s windows of 1.83 MiB, then 0.31 MiB
    assert [b.num_rows for b in blocks] == [2, 2]
    assert all(b.column("segments").to_pylist() == [4] * b.num_rows for b in blocks)
    assert [b.num_rows for b in _decode(output_block_mb=1.0)(batch([uri]))] == [1, 1, 1, 1]  # one window at least


def test_a_file_cut_short_is_an_error_row_with_no_window(tmp_path):
    """Found only at the end of the stream (the FLAC header declares the whole length): the row is one error
    row and none of its windows is emitted, though the first half decoded fine."""
    sf.write(tmp_path / "whole.flac", 0.3 * np.random.default_rng(0).standard_normal(16000 * 100), 16000)
    data = (tmp_path / "whole.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[:len(data) // 2])
    data = bytearray(data)
    data[len(data) // 3:len(data) // 3 + 4000] = np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes()
    (tmp_path / "bad.flac").write_bytes(bytes(data))
    out = run(_decode(), batch([str(tmp_path / "cut.flac"), str(tmp_path / "bad.flac")]))
    errs = out.column("error").to_pylist()
    assert errs[0].startswith(f"decode/truncated: {tmp_path}/cut.flac: file ends early: decoding stopped at")
    assert errs[1].startswith(f"decode/corrupt: {tmp_path}/bad.flac: undecodable after")
    assert out.num_rows == 2 and clips(out) == [None, None]


def test_a_wav_shorter_than_its_header_is_refused_before_decoding(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(16000, 10, 300.0, 1), 16000)
    data = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:len(data) // 2])
    out = run(_decode(), batch([str(tmp_path / "cut.wav")]))
    assert out.column("error")[0].as_py() == (f"decode/truncated: {tmp_path}/cut.wav: file ends early: "
                                              f"{len(data) // 2} bytes, the WAV header declares {len(data)}")


def test_stream_vad_equals_silero_over_the_whole_clip():
    """Probabilities with state carried across arbitrary blocks = Silero's own pass over the whole clip."""
    from silero_vad import load_silero_vad

    x = (np.random.default_rng(0).standard_normal(16000 * 40) * 0.1).astype(np.float32)
    x[16000 * 5:16000 * 12] *= 0.01
    model = load_silero_vad(sequence=True)
    stream = dec.StreamVAD(model.session)
    cuts = [0, 1000, 70_000, 333_333, len(x)]
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        stream.add(x[a:b], last=k == len(cuts) - 2)
    assert np.allclose(stream.result(), model.audio_forward(x), atol=1e-6)


@pytest.fixture(scope="module")
def talk(assets):
    """The 10-minute synthesized talk and its sentence boundaries (seconds)."""
    folder = assets["longform"]
    with open(f"{folder}/talk-10min.json") as f:
        return {"uri": f"{folder}/talk-10min.flac", "sentences": json.load(f)}


def in_pause(t, sentences):
    return all(not (start < t < end) for start, end, _ in sentences)


def test_vad_cuts_fall_in_pauses_and_count_speech(talk):
    out = run(_decode(cut="vad", cut_search_s=5.0), batch([talk["uri"]]))
    ends = out.column("segment_end_s").to_pylist()
    assert len(ends) >= 20 and all(in_pause(t, talk["sentences"]) for t in ends[:-1])
    speech = sum(end - start for start, end, _ in talk["sentences"])
    assert sum(out.column("speech_s").to_pylist()) == pytest.approx(speech, rel=0.05)
    energy = run(_decode(cut="energy", cut_search_s=5.0), batch([talk["uri"]]))
    assert energy.column("speech_s").null_count == energy.num_rows  # VAD only when asked for


def test_speech_segments_follow_the_sentences(talk):
    out = run(_decode(segment="vad"), batch([talk["uri"]]))
    starts, ends = out.column("segment_start_s").to_pylist(), out.column("segment_end_s").to_pylist()
    sentence_starts = np.array([s for s, _, _ in talk["sentences"]])
    sentence_ends = np.array([e for _, e, _ in talk["sentences"]])
    assert len(starts) >= 20 and out.column("segments").to_pylist() == [len(starts)] * len(starts)
    assert all(np.abs(sentence_starts - s).min() <= 0.3 for s in starts)
    assert all(np.abs(sentence_ends - e).min() <= 0.3 for e in ends)
    assert all(e - s <= 30.0 for s, e in zip(starts, ends))
