"""Clip identities: the exact hash, and a fingerprint that gain, codecs and offsets barely move."""
import numpy as np
import soundfile as sf

from operators.fingerprint import Identity, bit_error_rate, buckets, identify


def sound(seed=0, seconds=6.0):
    """Notes of harmonic tones with envelopes, over a little noise: something with structure in time."""
    rng, t = np.random.default_rng(seed), np.arange(int(seconds * 16000)) / 16000
    x = 0.02 * rng.standard_normal(t.size)
    for k, f in enumerate(rng.uniform(200, 900, int(seconds * 3))):
        a = int(k / 3 * 16000)
        tt = t[a:a + 8000] - t[a]
        x[a:a + len(tt)] += np.exp(-4 * tt) * np.sin(2 * np.pi * f * tt)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def test_the_same_samples_hash_the_same_in_wav_and_flac(tmp_path):
    """The same 16-bit samples in two containers, decoded as the pipeline decodes. (Written as integers:
    libsndfile's writers round floats to 16 bits a step apart for wav and flac.)"""
    from operators.decode import load

    x = (sound() * 32767).astype(np.int16)
    for fmt in ("WAV", "FLAC"):
        sf.write(tmp_path / f"a.{fmt.lower()}", x, 16000, format=fmt, subtype="PCM_16")
    wav, flac = (load(str(tmp_path / f"a.{e}"), 16000)[0] for e in ("wav", "flac"))
    assert identify([wav]).audio_hash == identify([flac]).audio_hash
    assert identify([wav]).audio_hash == identify([wav[:40000], wav[40000:]]).audio_hash  # chunks or whole: one
    assert identify([wav]).audio_hash != identify([wav * 0.5]).audio_hash


def test_gain_silence_and_offset_barely_move_the_fingerprint():
    x = sound()
    base = identify([x]).fingerprint
    louder = identify([np.clip(x * 1.9, -1, 1)]).fingerprint
    padded = identify([np.r_[np.zeros(6000, np.float32), x]]).fingerprint
    cut = identify([x[5000:]]).fingerprint
    assert bit_error_rate(base, louder) < 0.05
    assert bit_error_rate(base, padded) < 0.15  # silence in front is dropped
    assert bit_error_rate(base, cut) < 0.3  # a third of a second cut: found at another offset
    assert bit_error_rate(base, identify([sound(seed=1)]).fingerprint) > 0.4  # another clip: about half the bits
    assert len(base) == 4 * ((len(x) - 4096) // 512)  # 32 bits per 32 ms frame of 256 ms, less the first


def test_copies_share_a_bucket_and_the_exact_hash_is_one():
    a = Identity("h1", b"", (1 << 64) - 3, 10.2)
    b = Identity("h1", b"", 5, 30.0)
    assert buckets(a, 8, 8, 2.5)[0] == buckets(b, 8, 8, 2.5)[0]  # the exact hash
    near = Identity("h2", b"", ((1 << 64) - 3) ^ 1, 10.9)  # one bit and 0.7 s apart
    assert set(buckets(a, 8, 8, 2.5)[1:]) & set(buckets(near, 8, 8, 2.5)[1:])
    far = Identity("h3", b"", ((1 << 64) - 3) ^ 1, 20.0)
    assert not set(buckets(a, 8, 8, 2.5)[1:]) & set(buckets(far, 8, 8, 2.5)[1:])
