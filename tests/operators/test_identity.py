"""Dedup's identity stage: one row per input row with its clip's identities and no audio; bad rows say why."""
import numpy as np
import pytest
import soundfile as sf

from operators.identity import Identify
from tests.operators.test_decode import _tone, batch


def test_one_clip_in_two_formats_is_one_audio_hash_and_bad_rows_are_errors(tmp_path):
    x = _tone(16000, 3.0, 440.0, 1) + 0.01 * np.random.default_rng(0).standard_normal((48000, 1))
    pcm = np.round(x * 32767).astype(np.int16)  # the same samples in both files (writers round floats apart)
    sf.write(tmp_path / "a.wav", pcm, 16000)
    sf.write(tmp_path / "a.flac", pcm, 16000)
    uris = [str(tmp_path / "a.wav"), str(tmp_path / "a.flac"), str(tmp_path / "gone.wav"),
            [str(tmp_path / "a.wav"), str(tmp_path / "a.flac")]]
    stage = Identify(max_duration_s=3600.0, spill_mb=16.0, whole_mb=64.0)
    out = stage(batch(uris, id=["wav", "flac", "gone", "both"])).to_pylist()
    assert [r["id"] for r in out] == ["wav", "flac", "gone", "both"]  # one row per input row, in order
    wav, flac, gone, both = out
    assert wav["audio_hash"] == flac["audio_hash"] and wav["fingerprint"] == flac["fingerprint"]
    assert wav["duration_s"] == pytest.approx(3.0) and wav["segment_end_s"] == pytest.approx(3.0)
    assert (wav["segment"], wav["segments"], wav["error"]) == (0, 1, None)
    assert gone["error"].startswith("decode/missing: ") and gone["audio_hash"] is None
    assert both["error"].startswith("decode/several_audio: ")
    assert "waveform" not in out[0] and "audio_bytes" not in out[0]
