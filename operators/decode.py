"""Fetch and decode audio on CPU actors: fsspec bytes -> soundfile -> mono -> soxr to the model's rate.

Clips longer than the model's window are cut into windows (one row each, with `segment_start_s` and
`segment_end_s`) or refused, per `decode.long_audio`; nothing is silently truncated. Each failure
becomes the row's `error` as "decode/<kind>: <uri>: <reason>" and the job goes on.
"""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from operators.stage import Stage, actors, audio_column, errors, put


class DecodeError(Exception):
    def __init__(self, kind: str, uri: str, reason: str):
        super().__init__(f"decode/{kind}: {uri}: {reason}")


def fetch(uri: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        # fsspec's HTTP filesystem reports a refused connection as FileNotFoundError, caused by the real error.
        if e.__cause__ is not None:
            raise DecodeError("unreachable", uri, f"{type(e.__cause__).__name__}: {e.__cause__}") from None
        raise DecodeError("missing", uri, "no such file") from None
    except PermissionError as e:
        raise DecodeError("permission", uri, f"permission denied ({e.strerror or e})") from None
    except IsADirectoryError:
        raise DecodeError("missing", uri, "is a directory, not a file") from None
    except (OSError, ValueError, ImportError) as e:  # network, unknown protocol, protocol without its library
        raise DecodeError("unreachable", uri, f"{type(e).__name__}: {e}") from None
    if not data:
        raise DecodeError("empty", uri, "file is empty (0 bytes)")
    return data


def _riff_size(data: bytes) -> int:
    return int.from_bytes(data[4:8], "little") + 8


def _riff_short(data: bytes) -> bool:
    """A WAV whose RIFF header declares more bytes than the file has (libsndfile reads such files silently)."""
    return data[:4] == b"RIFF" and data[8:12] == b"WAVE" and _riff_size(data) > len(data)


def load(uri: str, sample_rate: int, data: bytes | None = None) -> tuple[np.ndarray, float]:
    """Mono float32 at `sample_rate` and the source duration in seconds, from `uri` or inline `data`."""
    import soundfile as sf
    import soxr

    if data is None:
        data = fetch(uri)
    elif not data:
        raise DecodeError("empty", uri, "inline audio is empty (0 bytes)")
    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        kind = "not_audio" if "recognised" in str(e) or "unknown format" in str(e).lower() else "corrupt"
        raise DecodeError(kind, uri, str(e)) from None
    except (RuntimeError, ValueError, TypeError) as e:
        raise DecodeError("corrupt", uri, f"{type(e).__name__}: {e}") from None
    if x.shape[0] == 0:
        raise DecodeError("no_samples", uri, "decoded to zero samples")
    declared = sf.info(io.BytesIO(data)).frames
    if x.shape[0] < 0.99 * declared or _riff_short(data):
        raise DecodeError("truncated", uri, f"file ends early: {x.shape[0]} of {declared} frames decoded"
                          if x.shape[0] < 0.99 * declared else f"file ends early: {len(data)} bytes, the WAV "
                          f"header declares {_riff_size(data)}")
    if not np.isfinite(x).all():
        raise DecodeError("nan", uri, "samples contain NaN or inf")
    duration = x.shape[0] / rate
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32), duration


FRAME_S = 0.02


def windows(wave: np.ndarray, sample_rate: int, window_s: float, search_s: float,
            overlap_s: float = 0.0) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering `wave` in windows of at most `window_s` seconds, each cut at the
    middle of the quietest 20 ms frame within its last `search_s` seconds (hard cuts when 0); each window
    after the first starts `overlap_s` before the previous one's end, so words at a cut are heard whole."""
    n, size = len(wave), int(round(window_s * sample_rate))
    frame, search = max(int(FRAME_S * sample_rate), 1), int(search_s * sample_rate)
    overlap = int(round(overlap_s * sample_rate))
    spans, start = [], 0
    while n - start > size:
        cut = start + size
        if search >= frame:
            tail = wave[cut - search:cut]
            energy = np.square(tail[:len(tail) // frame * frame].reshape(-1, frame)).mean(axis=1)
            cut = cut - search + int(energy.argmin()) * frame + frame // 2
        spans.append((start, cut))
        start = cut - overlap
    spans.append((start, n))
    return spans


# Peak amplitude under which a clip is flagged as silent (-80 dBFS): kept, but marked in `warning`.
SILENCE_PEAK = 1e-4


class Decode(Stage):
    reads = ("audio_uris",)
    writes = ("waveform", "duration_s", "segment", "segments", "segment_start_s", "segment_end_s", "warning",
              "error")

    def setup(self) -> None:
        self.rate: int = self.cfg["sample_rate"]
        self.window_s: float = self.cfg["window_s"]
        self.long_audio: str = self.cfg["long_audio"]
        self.max_duration_s: float = self.cfg["max_duration_s"]
        self.cut_search_s: float = self.cfg["cut_search_s"]
        self.overlap_s: float = self.cfg["overlap_s"]

    def _load(self, uri: str, data: bytes | None) -> tuple[np.ndarray, float]:
        wave, duration = load(uri, self.rate, data)
        if duration > self.max_duration_s:
            raise DecodeError("too_long", uri, f"{duration:.1f} s exceeds decode.max_duration_s="
                                               f"{self.max_duration_s:g}")
        return wave, duration

    def _segments(self, uris: list[str], inline: list) -> tuple[list, float]:
        """[(clips, start_s, end_s)] per window of the row, and the row's audio duration.

        A row with one audio is cut into windows when longer than the model's; a row with several (a
        question about more than one clip) goes whole, so each clip must fit the window."""
        loaded = [self._load(u, d) for u, d in zip(uris, inline)]
        duration = sum(d for _, d in loaded)
        if len(loaded) > 1:
            for uri, (wave, _) in zip(uris, loaded):
                if len(wave) > self.window_s * self.rate:
                    raise DecodeError("too_long", uri, f"{len(wave) / self.rate:.1f} s exceeds the model's "
                                      f"{self.window_s:g} s window; a row with several audio items is not cut")
            return [([w for w, _ in loaded], 0.0, duration)], duration
        wave, uri = loaded[0][0], uris[0]
        spans = windows(wave, self.rate, self.window_s, self.cut_search_s, self.overlap_s)
        if len(spans) > 1 and self.long_audio == "error":
            raise DecodeError("too_long", uri, f"{duration:.1f} s exceeds the model's {self.window_s:g} s window "
                                               "(set decode.long_audio=split to cut it into windows)")
        return [([wave[a:b]], a / self.rate, b / self.rate) for a, b in spans], duration

    def process(self, batch: pa.Table) -> pa.Table:
        take, waves, durations, segment, segments, starts, ends, warns, errs = ([] for _ in range(9))
        inline = batch.column("audio_bytes").to_pylist()
        for i, (uris, data, err) in enumerate(zip(batch.column("audio_uris").to_pylist(), inline, errors(batch))):
            segs, duration, warn = [], None, None
            if err is None:
                try:
                    segs, duration = self._segments(uris, data)
                except DecodeError as e:
                    err = str(e)
                except Exception as e:  # noqa: BLE001 - an unforeseen failure is still one row's problem
                    err = f"decode/unexpected: {', '.join(uris)}: {type(e).__name__}: {e}"
            if segs and max(float(np.abs(w).max(initial=0.0)) for clips, _, _ in segs for w in clips) < SILENCE_PEAK:
                warn = f"decode/silent: {', '.join(uris)}: peak amplitude below {SILENCE_PEAK:g}"
            for k, (clips, start, end) in enumerate(segs or [(None, None, None)]):
                take.append(i)
                waves.append(clips)
                durations.append(duration)
                segment.append(k)
                segments.append(max(len(segs), 1))
                starts.append(start)
                ends.append(end)
                warns.append(warn)
                errs.append(err)
        out = batch.take(pa.array(take, pa.int64()))
        return put(out, waveform=audio_column(waves), duration_s=pa.array(durations, pa.float64()),
                   segment=pa.array(segment, pa.int32()), segments=pa.array(segments, pa.int32()),
                   segment_start_s=pa.array(starts, pa.float64()), segment_end_s=pa.array(ends, pa.float64()),
                   warning=pa.array(warns, pa.string()), error=pa.array(errs, pa.string()))


def apply(ds, cfg, spec):
    """CPU actor pool that decodes each row's `audio_uris` into `waveform` at the model's sample rate."""
    return ds.map_batches(
        Decode,
        fn_constructor_kwargs=dict(sample_rate=spec.sample_rate, window_s=spec.window_s,
                                   long_audio=cfg.decode.long_audio, max_duration_s=cfg.decode.max_duration_s,
                                   cut_search_s=cfg.decode.cut_search_s, overlap_s=cfg.decode.overlap_s),
        batch_format="pyarrow",
        batch_size=cfg.decode.batch_size,
        compute=actors(cfg.decode.concurrency),
        num_cpus=cfg.decode.num_cpus,
    )
