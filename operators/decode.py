"""Fetch and decode audio on CPU actors, streamed: fsspec -> soundfile blocks -> mono -> soxr stream -> windows.

A clip is read in blocks of `BLOCK_FRAMES` (soundfile), mixed to mono and resampled to the model's rate as a
stream (soxr's ResampleStream), so memory holds one block, never the file: a 4 h file decodes in the same
few hundred MiB as a 4 s one. The resampled audio goes to a spill buffer (in memory up to `decode.spill_mb`,
then a temporary file) while the features that choose cuts are kept per frame: energy every 20 ms and, when
the config asks for it, Silero VAD's speech probability every 32 ms (its batched ONNX model, state carried
from block to block). Only when the whole file has decoded cleanly are the cuts chosen and the windows read
back from the spill, one at a time, into bounded output blocks: an error found late in a file (truncated,
corrupt after an hour) makes the row an error row, and no window of it has left the actor as good.

Clips longer than the model's window are cut into windows (one row each, with `segment_start_s`,
`segment_end_s` and, with VAD, `speech_s`) at the quietest moment (`decode.cut: energy`) or in the longest
pause between speech (`vad`) near each window's end, or refused, per `decode.long_audio`. With
`decode.segment: vad` the rows are the speech segments instead. Nothing is silently truncated. Each failure
becomes the row's `error` as "decode/<kind>: <uri>: <reason>" and the job goes on.
"""
from __future__ import annotations

import io
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from operators.stage import Stage, actors, audio_column, errors, put

BLOCK_FRAMES = 1 << 18  # source frames decoded at once (6 s at 44.1 kHz, 2 MiB of stereo float32)
FRAME_S = 0.02  # energy frames: cuts fall in the middle of the quietest one
VAD_FRAME = 512  # Silero VAD frame at 16 kHz (32 ms), with 64 samples of context from the frame before
VAD_CONTEXT = 64
VAD_BLOCK = 512  # VAD frames per ONNX call (16 s of audio)
# libsndfile's MP3 decoder returns a wrong frame at the start of every read after the first, as if its bit
# reservoir were lost between calls (up to 0.5 off on a pure tone; a whole-file read is right). Each block
# after the first is read from eight MPEG frames earlier and those are dropped: then blocks equal the
# whole-file read exactly (two frames were not always enough, four were in every file measured).
MP3_REDO = 8 * 1152
# Peak amplitude under which a clip is flagged as silent (-80 dBFS): kept, but marked in `warning`.
SILENCE_PEAK = 1e-4


class DecodeError(Exception):
    def __init__(self, kind: str, uri: str, reason: str):
        super().__init__(f"decode/{kind}: {uri}: {reason}")


@contextmanager
def source(uri: str, data: bytes | None, whole_bytes: int):
    """(file object, size) of a clip: inline bytes, a remote file small enough to fetch in one request, or
    a file object that streams (local files, large remote files through fsspec's ranged reads)."""
    import fsspec

    if data is not None:
        if not data:
            raise DecodeError("empty", uri, "inline audio is empty (0 bytes)")
        yield io.BytesIO(data), len(data)
        return
    try:
        of = fsspec.open(uri, "rb")
        local = "file" in (of.fs.protocol if isinstance(of.fs.protocol, tuple) else (of.fs.protocol,))
        # A named pipe or a device is no clip: opened, a pipe waits for a writer forever, and the run with it.
        kind = of.fs.info(of.path)["type"] if local else "file"
        if kind == "directory":
            raise IsADirectoryError(uri)
        if kind != "file":
            raise DecodeError("missing", uri, "is a named pipe, socket or device, not a regular file")
        f = of.open()
        size = f.size if getattr(f, "size", None) is not None else f.fs.size(f.path)
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
    try:
        if not size:
            raise DecodeError("empty", uri, "file is empty (0 bytes)")
        # A small remote file in one request rather than many ranged reads; a local one always streams.
        if size <= whole_bytes and not local:
            try:
                data = f.read()
            except OSError as e:
                raise DecodeError("unreachable", uri, f"{type(e).__name__}: {e}") from None
            yield io.BytesIO(data), len(data)
        else:
            yield f, size
    finally:
        f.close()


def _riff_size(head: bytes) -> int | None:
    """Bytes a WAV's RIFF header declares (libsndfile reads a WAV shorter than that without complaint)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return int.from_bytes(head[4:8], "little") + 8
    return None


class StreamVAD:
    """Silero VAD over a stream of 16 kHz audio: the batched ("sequence") ONNX model shipped in the
    silero-vad wheel, one call per VAD_BLOCK frames, its LSTM state and frame context carried between
    calls, so probabilities equal those of one pass over the whole clip."""

    def __init__(self, session):
        self.session = session
        self.state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self.context = np.zeros(VAD_CONTEXT, np.float32)
        self.rest = np.zeros(0, np.float32)
        self.probs: list[np.ndarray] = []

    def add(self, x: np.ndarray, last: bool = False) -> None:
        x = np.concatenate([self.rest, x])
        if last and len(x) % VAD_FRAME:
            x = np.concatenate([x, np.zeros(VAD_FRAME - len(x) % VAD_FRAME, np.float32)])  # as silero pads
        n = len(x) // VAD_FRAME * VAD_FRAME
        frames, self.rest = x[:n].reshape(-1, VAD_FRAME), x[n:]
        for a in range(0, len(frames), VAD_BLOCK):
            block = frames[a:a + VAD_BLOCK]
            contexts = np.concatenate([self.context[None], block[:-1, -VAD_CONTEXT:]])
            probs, h, c = self.session.run(["speech_probs", "hn", "cn"], {
                "input": np.concatenate([contexts, block], axis=1), "h": self.state[0], "c": self.state[1]})
            self.state, self.context = (h, c), block[-1, -VAD_CONTEXT:].copy()
            self.probs.append(np.asarray(probs, np.float32).reshape(-1))

    def result(self) -> np.ndarray:
        return np.concatenate(self.probs) if self.probs else np.zeros(0, np.float32)


def vad_session():
    """Silero VAD's batched ONNX model from its wheel (no hub): CPU, one thread per actor."""
    from silero_vad import load_silero_vad

    return load_silero_vad(sequence=True).session


@dataclass
class Clip:
    """A decoded clip: its resampled mono samples in a spill buffer, and the features cuts are chosen by."""

    spill: tempfile.SpooledTemporaryFile
    rate: int
    samples: int
    duration: float  # source seconds
    peak: float
    energy: np.ndarray  # mean square per FRAME_S frame
    speech: np.ndarray | None  # Silero speech probability per VAD_FRAME, when VAD ran

    def read(self, a: int = 0, b: int | None = None) -> np.ndarray:
        b = self.samples if b is None else b
        self.spill.seek(4 * a)
        return np.frombuffer(self.spill.read(4 * (b - a)), np.float32)

    def close(self) -> None:
        self.spill.close()


def decode(uri: str, data: bytes | None, rate: int, *, max_duration_s: float = float("inf"),
           vad=None, spill_mb: float = 16, whole_mb: float = 64) -> Clip:
    """Stream-decode one clip to mono float32 at `rate`; raise DecodeError naming what is wrong."""
    import soundfile as sf

    with source(uri, data, int(whole_mb * 2 ** 20)) as (f, size):
        head = f.read(12)
        f.seek(0)
        declared_bytes = _riff_size(head)
        if declared_bytes is not None and declared_bytes > size:
            raise DecodeError("truncated", uri, f"file ends early: {size} bytes, the WAV header declares "
                                               f"{declared_bytes}")
        try:
            snd = sf.SoundFile(f)
        except sf.LibsndfileError as e:
            # libsndfile names the file object ("Error opening <_io.BytesIO object at 0x...>: "): the reason alone.
            reason = re.sub(r"^Error opening .*?: ", "", str(e))
            kind = "not_audio" if "recognised" in reason or "unknown format" in reason.lower() else "corrupt"
            raise DecodeError(kind, uri, reason) from None
        except (RuntimeError, ValueError, TypeError) as e:
            raise DecodeError("corrupt", uri, f"{type(e).__name__}: {e}") from None
        with snd:
            src_rate, declared = snd.samplerate, snd.frames
            if declared / src_rate > max_duration_s:
                raise DecodeError("too_long", uri, f"{declared / src_rate:.1f} s exceeds decode.max_duration_s="
                                                   f"{max_duration_s:g}")
            spill = tempfile.SpooledTemporaryFile(max_size=int(spill_mb * 2 ** 20))
            try:
                return _stream(snd, uri, rate, src_rate, declared, spill, vad, lambda: f.tell() >= size)
            except BaseException:
                spill.close()
                raise


def _stream(snd, uri: str, rate: int, src_rate: int, declared: int, spill, vad, at_end: Callable[[], bool]) -> Clip:
    """Decode `snd` block by block into `spill`; `at_end()` tells whether the whole file has been read."""
    import soundfile as sf
    import soxr

    resampler = soxr.ResampleStream(src_rate, rate, 1, dtype="float32", quality="HQ") if src_rate != rate else None
    frame = max(int(FRAME_S * rate), 1)
    energy, rest = [], np.zeros(0, np.float32)
    stream = StreamVAD(vad) if vad is not None else None
    decoded, samples, peak = 0, 0, 0.0
    redo = MP3_REDO if snd.format == "MP3" and snd.seekable() else 0
    while True:
        try:
            back = min(redo, decoded)
            if back:
                snd.seek(decoded - back)
            x = snd.read(BLOCK_FRAMES + back, dtype="float32", always_2d=True)[back:]
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            # The decoder lost its way: at the file's last byte the file was cut short, before it corrupt.
            if at_end():
                raise DecodeError("truncated", uri, f"file ends early: decoding stopped at {decoded / src_rate:.1f} "
                                                    f"of {declared / src_rate:.1f} s ({e})") from None
            raise DecodeError("corrupt", uri, f"undecodable after {decoded / src_rate:.1f} of "
                                              f"{declared / src_rate:.1f} s: {e}") from None
        last = len(x) < BLOCK_FRAMES
        if len(x) and not np.isfinite(x).all():
            raise DecodeError("nan", uri, f"samples contain NaN or inf (at {decoded / src_rate:.1f} s)")
        decoded += len(x)
        mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
        y = resampler.resample_chunk(mono, last=last) if resampler is not None else mono
        y = np.ascontiguousarray(y, np.float32)
        if len(y):
            spill.write(y.data)
            samples += len(y)
            peak = max(peak, float(np.abs(y).max()))
            z = np.concatenate([rest, y])
            n = len(z) // frame * frame
            energy.append(np.square(z[:n]).reshape(-1, frame).mean(axis=1))
            rest = z[n:]
        if stream is not None:
            stream.add(y, last=last)
        if last:
            break
    if decoded == 0:
        raise DecodeError("no_samples", uri, "decoded to zero samples")
    if decoded < 0.99 * declared:
        raise DecodeError("truncated", uri, f"file ends early: {decoded} of {declared} frames decoded "
                                            f"({decoded / src_rate:.1f} of {declared / src_rate:.1f} s)")
    if len(rest):
        energy.append(np.array([np.square(rest).mean()], np.float32))
    return Clip(spill, rate, samples, decoded / src_rate, peak, np.concatenate(energy).astype(np.float32),
                stream.result() if stream is not None else None)


def window(uri: str, start_s: float, end_s: float, rate: int) -> np.ndarray:
    """Mono float32 at `rate` of [start_s, end_s) of a clip: seek, read that stretch, resample."""
    import soundfile as sf
    import soxr

    with source(uri, None, 64 * 2 ** 20) as (f, _):
        try:
            with sf.SoundFile(f) as snd:
                snd.seek(int(round(start_s * snd.samplerate)))
                x = snd.read(int(round((end_s - start_s) * snd.samplerate)), dtype="float32", always_2d=True)
                src = snd.samplerate
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            raise DecodeError("corrupt", uri, str(e)) from None
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return soxr.resample(mono, src, rate, quality="HQ").astype(np.float32) if src != rate else mono


def load(uri: str, sample_rate: int, data: bytes | None = None) -> tuple[np.ndarray, float]:
    """Mono float32 at `sample_rate` and the source duration in seconds: the whole clip, as the pipeline
    decodes it (for tests and benchmarks that need the audio an engine saw)."""
    clip = decode(uri, data, sample_rate)
    try:
        return clip.read().copy(), clip.duration
    finally:
        clip.close()


# -- where to cut ---------------------------------------------------------------------------------------
def windows(n: int, rate: int, window_s: float, search_s: float, overlap_s: float = 0.0,
            cut: Callable[[int, int], int] | None = None) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering n samples in windows of at most `window_s` seconds, each cut by
    `cut(lo, hi)` within its last `search_s` seconds (hard cuts when 0 or no `cut`); each window after the
    first starts `overlap_s` before the previous one's end, so words at a cut are heard whole."""
    size, search = int(round(window_s * rate)), int(round(search_s * rate))
    overlap = int(round(overlap_s * rate))
    spans, start = [], 0
    while n - start > size:
        end = start + size
        if search and cut is not None:
            end = cut(end - search, end)
        spans.append((start, end))
        start = end - overlap
    spans.append((start, n))
    return spans


def quietest(energy: np.ndarray, frame: int) -> Callable[[int, int], int]:
    """Cut in the middle of the quietest whole energy frame within [lo, hi)."""
    def cut(lo: int, hi: int) -> int:
        a, b = -(-lo // frame), hi // frame
        if b <= a:
            return hi
        return (a + int(energy[a:b].argmin())) * frame + frame // 2
    return cut


def longest_pause(speech: list[tuple[int, int]], fallback: Callable[[int, int], int]) -> Callable[[int, int], int]:
    """Cut in the middle of the longest stretch without speech within [lo, hi); where speech fills all
    of it, at the quietest point instead."""
    starts = np.array([s for s, _ in speech], np.int64)
    ends = np.array([e for _, e in speech], np.int64)

    def cut(lo: int, hi: int) -> int:
        # Pauses inside [lo, hi): from each speech end (or lo) to the next speech start (or hi).
        inside = (ends > lo) & (starts < hi)
        s, e = starts[inside], ends[inside]
        gap_starts = np.r_[lo, e]
        gap_ends = np.r_[s, hi]
        gap_starts, gap_ends = np.maximum(gap_starts, lo), np.minimum(gap_ends, hi)
        lengths = gap_ends - gap_starts
        if not len(lengths) or lengths.max() <= 0:
            return fallback(lo, hi)
        k = int(lengths.argmax())
        return int(gap_starts[k] + lengths[k] // 2)
    return cut


def speech_spans(probs: np.ndarray, rate: int, samples: int, **params) -> list[tuple[int, int]]:
    """Speech intervals in samples from Silero's per-frame probabilities (its own state machine)."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    stamps = get_speech_timestamps_from_probs(probs.tolist(), sampling_rate=rate, audio_length_samples=samples,
                                              **params)
    return [(int(t["start"]), int(t["end"])) for t in stamps]


def speech_seconds(spans: list[tuple[int, int]], speech: list[tuple[int, int]], rate: int) -> list[float]:
    """Seconds of speech inside each [a, b) span."""
    if not speech:
        return [0.0] * len(spans)
    s = np.array(speech, np.int64)
    return [float(np.clip(np.minimum(s[:, 1], b) - np.maximum(s[:, 0], a), 0, None).sum()) / rate for a, b in spans]


def attempt(work: Callable, uris: list[str]) -> tuple:
    """(work(), None), or (None, the row's error): a DecodeError's own message, else decode/unexpected naming the
    row's files, so that one bad file is one error row and never the job's end."""
    try:
        return work(), None
    except DecodeError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - an unforeseen failure is still one row's problem
        return None, f"decode/unexpected: {', '.join(uris)}: {type(e).__name__}: {e}"


class Decode(Stage):
    """Windows of each row's audio (dedup's identities of each clip: operators/identity.py)."""

    reads = ("audio_uris", "audio_bytes")
    writes = ("waveform", "duration_s", "segment", "segments", "segment_start_s", "segment_end_s", "speech_s",
              "warning", "error")
    drops = ("audio_bytes",)  # a parquet shard's inline audio: decoded here, needed by no later stage
    working = ("waveform",)
    records = ("warning",)

    def setup(self) -> None:
        c = self.cfg
        self.rate: int = c["sample_rate"]
        self.window_s: float = c["window_s"]
        self.long_audio: str = c["long_audio"]
        self.max_duration_s: float = c["max_duration_s"]
        self.cut_search_s: float = c["cut_search_s"]
        self.overlap_s: float = c["overlap_s"]
        self.cut: str = c["cut"]
        self.segment: str = c["segment"]
        self.vad_params: dict = c["vad"]  # Silero's state-machine arguments: speech, for cuts and speech_s
        self.segment_params: dict = c["segment_vad"]  # ... and for speech segments as rows
        self.spill_mb: float = c["spill_mb"]
        self.whole_mb: float = c["whole_mb"]
        self.block_bytes = int(c["output_block_mb"] * 2 ** 20)
        self.vad = vad_session() if "vad" in (self.cut, self.segment) else None

    def _decode(self, uri: str, data: bytes | None) -> Clip:
        return decode(uri, data, self.rate, max_duration_s=self.max_duration_s, vad=self.vad,
                      spill_mb=self.spill_mb, whole_mb=self.whole_mb)

    def _spans(self, clip: Clip, uri: str) -> tuple[list[tuple[int, int]], list[float] | None]:
        """The rows of a one-clip row: windows (or speech segments) and their seconds of speech."""
        speech = (speech_spans(clip.speech, self.rate, clip.samples, **self.vad_params)
                  if clip.speech is not None else None)
        if self.segment == "vad":
            spans = speech_spans(clip.speech, self.rate, clip.samples, **self.segment_params)
            if not spans:
                raise DecodeError("no_speech", uri, f"no speech found in {clip.duration:.1f} s "
                                                    "(decode.segment=vad emits speech segments only)")
        else:
            quiet = quietest(clip.energy, max(int(FRAME_S * self.rate), 1))
            cut = longest_pause(speech, quiet) if self.cut == "vad" else quiet
            spans = windows(clip.samples, self.rate, self.window_s, self.cut_search_s, self.overlap_s, cut)
            if len(spans) > 1 and self.long_audio == "error":
                raise DecodeError("too_long", uri, f"{clip.duration:.1f} s exceeds the model's {self.window_s:g} s "
                                                   "window (set decode.long_audio=split to cut it into windows)")
        return spans, speech_seconds(spans, speech, self.rate) if speech is not None else None

    def _plan(self, uris: list[str], inline: list) -> tuple[list[Clip], list[tuple], float, str | None]:
        """Decode every clip of a row, then plan its output rows: [(parts, start_s, end_s, speech_s)], where
        parts are (clip, a, b) sample ranges read from the spill as each row is emitted.

        A row with one audio is cut into windows when longer than the model's; a row with several (a
        question about more than one clip) goes whole, so each clip must fit the window."""
        clips: list[Clip] = []
        try:
            for uri, data in zip(uris, inline):
                clips.append(self._decode(uri, data))
            duration = sum(c.duration for c in clips)
            warn = None
            if max(c.peak for c in clips) < SILENCE_PEAK:
                warn = f"decode/silent: {', '.join(uris)}: peak amplitude below {SILENCE_PEAK:g}"
            if len(clips) == 1:
                spans, speech = self._spans(clips[0], uris[0])
                plan = [([(clips[0], a, b)], a / self.rate, b / self.rate, None if speech is None else speech[k])
                        for k, (a, b) in enumerate(spans)]
                return clips, plan, duration, warn
            for uri, c in zip(uris, clips):
                if c.samples > self.window_s * self.rate:
                    raise DecodeError("too_long", uri, f"{c.samples / self.rate:.1f} s exceeds the model's "
                                      f"{self.window_s:g} s window; a row with several audio items is not cut")
            speech = None
            if self.vad is not None:
                speech = sum(speech_seconds([(0, c.samples)], speech_spans(c.speech, self.rate, c.samples,
                                                                           **self.vad_params), self.rate)[0]
                             for c in clips)
            return clips, [([(c, 0, c.samples) for c in clips], 0.0, duration, speech)], duration, warn
        except BaseException:
            for c in clips:
                c.close()
            raise

    def process(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Yields blocks of about `output_block_mb` of audio at most: a long clip's windows leave in several,
        each read from the spill only when its block is built."""
        out = _Block()
        inline = batch.column("audio_bytes").to_pylist()
        for i, (uris, data, err) in enumerate(zip(batch.column("audio_uris").to_pylist(), inline, errors(batch))):
            planned, err = attempt(lambda: self._plan(uris, data), uris) if err is None else (None, err)
            if err is not None:
                out.add(i, 0, 1, None, None, None, None, None, None, err)
                continue
            clips, plan, duration, warn = planned
            try:
                for k, (parts, start, end, speech) in enumerate(plan):
                    if out.take and out.nbytes + 4 * sum(b - a for _, a, b in parts) > self.block_bytes:
                        yield out.flush(batch)  # a block holds up to output_block_mb, or one window
                    out.add(i, k, len(plan), [c.read(a, b) for c, a, b in parts], start, end, speech, duration,
                            warn, None)
            finally:
                for c in clips:
                    c.close()
        if out.take:
            yield out.flush(batch)


class _Block:
    """Output rows of the decode stage gathered into one Arrow block."""

    COLUMNS = ("take", "segment", "segments", "waves", "starts", "ends", "speech", "durations", "warns", "errs")

    def __init__(self):
        for name in self.COLUMNS:
            setattr(self, name, [])
        self.nbytes = 0

    def add(self, *values) -> None:
        for name, v in zip(self.COLUMNS, values):
            getattr(self, name).append(v)
        self.nbytes += 4 * sum(len(c) for c in values[3] or ())

    def flush(self, batch: pa.Table) -> pa.Table:
        out = put(batch.take(pa.array(self.take, pa.int64())), waveform=audio_column(self.waves),
                  duration_s=pa.array(self.durations, pa.float64()), segment=pa.array(self.segment, pa.int32()),
                  segments=pa.array(self.segments, pa.int32()), segment_start_s=pa.array(self.starts, pa.float64()),
                  segment_end_s=pa.array(self.ends, pa.float64()), speech_s=pa.array(self.speech, pa.float64()),
                  warning=pa.array(self.warns, pa.string()), error=pa.array(self.errs, pa.string()))
        self.__init__()
        return out


def options(d, spec) -> dict:
    """The Decode stage's arguments: the config's `decode` section and the model's rate and window."""
    return dict(sample_rate=spec.sample_rate, window_s=d.window_s or spec.window_s, long_audio=d.long_audio,
                max_duration_s=d.max_duration_s, cut_search_s=d.cut_search_s, overlap_s=d.overlap_s, cut=d.cut,
                segment=d.segment, vad=d.vad.silero(), segment_vad=d.segments.silero(d.vad), spill_mb=d.spill_mb,
                whole_mb=d.whole_mb, output_block_mb=d.output_block_mb)


def apply(ds, cfg, spec):
    """CPU actor pool that decodes each row's audio into `waveform` (windows) at the model's sample rate."""
    from operators.config import decode_pool

    d = cfg.decode
    return ds.map_batches(
        Decode,
        fn_constructor_kwargs=options(d, spec),
        batch_format="pyarrow",
        batch_size=d.batch_size,
        compute=actors(decode_pool(cfg)),
        num_cpus=d.num_cpus,
    )
