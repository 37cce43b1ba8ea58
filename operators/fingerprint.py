"""Two identities of a clip, computed in the decode actors from its 16 kHz mono audio.

- `audio_hash`: BLAKE2b of the decoded samples as 16-bit PCM: the same audio in wav and flac is one clip.
- `fingerprint`: a perceptual fingerprint that survives re-encoding, resampling, gain, downmix and a little
  silence or offset at the start. After Haitsma & Kalker (2002): the spectrum in 33 bands from 300 Hz to
  4 kHz every 32 ms over 256 ms frames, and per frame 32 bits, the sign of the band-energy difference
  across frequency and time: a gain change cancels out, and lossy codecs keep the coarse band shape. Quiet
  frames are dropped first, so leading silence does not shift it. Stored as bytes, 125 B per second.
- `signature`: a 64-bit SimHash of the clip's band statistics (log energy mean and spread per band, gain
  removed), for locality-sensitive buckets: copies land in a shared bucket, so only those are compared.

Two clips are copies when their bit error rate, at the best offset within `MAX_SHIFT_S`, is at most a
threshold and their durations agree; the thresholds are the dedup config's.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

RATE = 16_000
N_FFT, HOP = 4096, 512  # 256 ms frames every 32 ms
BANDS = np.geomspace(300.0, 4000.0, 34)  # 33 bands: 32 differences
QUIET_DB = -45.0  # frames this far under the clip's loudest are silence
MAX_SHIFT_S = 1.1  # offsets searched when comparing two clips: one had 0.5 s added, the other 0.5 s cut


@dataclass
class Identity:
    audio_hash: str
    fingerprint: bytes
    signature: int  # 64 bits
    active_s: float  # seconds from the first to the last frame that is not silence


def identify(chunks: Iterable[np.ndarray]) -> Identity:
    """Both identities of a clip from its 16 kHz mono samples, chunk by chunk (one pass, bounded memory)."""
    h, spectrum = hashlib.blake2b(digest_size=16), Spectrum()
    for x in chunks:
        h.update(np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2").tobytes())
        spectrum.add(x)
    fingerprint, signature, frames = identity(spectrum.energies())
    return Identity(h.hexdigest(), fingerprint, signature, frames * HOP / RATE)


class Spectrum:
    """Band energies of a stream of 16 kHz audio, frame by frame (bounded memory for any length)."""

    def __init__(self):
        freqs = np.fft.rfftfreq(N_FFT, 1 / RATE)
        band = np.digitize(freqs, BANDS) - 1
        inside = np.flatnonzero((band >= 0) & (band < len(BANDS) - 1))
        # Only the bins inside the bands are squared and summed (300 Hz - 4 kHz: under half of them); a band
        # is a run of adjacent bins, so one reduceat sums them (no BLAS call, whose threads would spin).
        self.lo, self.hi = inside[0], inside[-1] + 1
        self.starts = np.searchsorted(band[self.lo:self.hi], np.arange(len(BANDS) - 1))
        self.window = np.hanning(N_FFT).astype(np.float32)
        self.rest = np.zeros(0, np.float32)
        self.frames: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> None:
        import scipy.fft

        x = np.concatenate([self.rest, np.asarray(x, np.float32)])
        n = (len(x) - N_FFT) // HOP + 1 if len(x) >= N_FFT else 0
        if n:
            frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:n] * self.window
            spectrum = scipy.fft.rfft(frames, axis=1, workers=1)[:, self.lo:self.hi]  # float32 throughout
            power = spectrum.real ** 2 + spectrum.imag ** 2
            self.frames.append(np.add.reduceat(power, self.starts, axis=1).astype(np.float64))
        self.rest = x[n * HOP:]

    def energies(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros((0, len(BANDS) - 1))


def identity(energy: np.ndarray, seed: int = 0) -> tuple[bytes, int, int]:
    """(fingerprint bytes, 64-bit signature, frames not silent) from band energies per frame."""
    if not len(energy) or not energy.any():
        return b"", 0, 0
    loud = energy.sum(axis=1)
    keep = 10 * np.log10(loud + 1e-20) >= 10 * np.log10(loud.max() + 1e-20) + QUIET_DB
    first, last = np.flatnonzero(keep)[[0, -1]]
    e = energy[first:last + 1]
    diff = e[:, :-1] - e[:, 1:]  # across frequency
    bits = (diff[1:] - diff[:-1]) > 0  # ... and time
    words = np.packbits(bits, axis=1, bitorder="little").view("<u4").reshape(-1)
    log = np.log10(e + 1e-12)
    log -= log.mean()  # gain is an offset in log energy
    stats = np.concatenate([log.mean(axis=0), log.std(axis=0)])
    planes = np.random.default_rng(seed).standard_normal((64, len(stats)))
    signature = int(np.packbits(planes @ stats > 0, bitorder="little").view("<u8")[0])
    return words.astype("<u4").tobytes(), signature, len(e)


def bit_error_rate(a: bytes, b: bytes, max_shift: int = int(MAX_SHIFT_S * RATE / HOP),
                   min_overlap: float = 0.5) -> float:
    """Lowest fraction of differing bits over the offsets within max_shift frames where the two
    fingerprints overlap by at least min_overlap of the shorter; 1.0 where they never do."""
    x, y = np.frombuffer(a, "<u4"), np.frombuffer(b, "<u4")
    need = max(1, int(min_overlap * min(len(x), len(y))))
    best = 1.0
    for shift in range(-max_shift, max_shift + 1):
        xs, ys = (x[shift:], y) if shift >= 0 else (x, y[-shift:])
        n = min(len(xs), len(ys))
        if n < need:
            continue
        differ = np.unpackbits((xs[:n] ^ ys[:n]).view(np.uint8)).sum()
        best = min(best, differ / (32 * n))
    return best


def buckets(identity: Identity, bands: int, bits: int, seconds: float) -> list[int]:
    """LSH bucket keys of a clip: its exact hash, and per band of `bits` signature bits that band's value
    with the clip's length on two grids of `seconds` offset by half (any two lengths within seconds/2
    share a cell of one grid). Copies share a key unless every band of their signatures differs."""
    keys = [identity.audio_hash]
    for grid in (0.0, 0.5):
        cell = int(identity.active_s / seconds + grid)
        keys += [f"{grid}/{cell}/{k}/{(identity.signature >> (k * bits)) & ((1 << bits) - 1)}" for k in range(bands)]
    return [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little", signed=True) for k in keys]
