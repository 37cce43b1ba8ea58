"""Dedup's pass over the audio: each input row's clip decoded (operators/decode.py's streamed decoder) into its
identities (operators/fingerprint.py), one row per input row and no audio handed on.

A clip is fingerprinted a minute at a time as it is read back from the decoder's spill, so an hours-long file
takes what a short one does. A row with several audio items has no one identity: it is an error row.
"""
from __future__ import annotations

import pyarrow as pa

from operators.decode import SILENCE_PEAK, DecodeError, attempt, decode
from operators.stage import Stage, actors, errors, put

CHUNK = 60 * 16_000  # samples of a decoded clip fingerprinted at once


class Identify(Stage):
    reads = ("audio_uris", "audio_bytes")
    writes = ("audio_hash", "fingerprint", "signature", "active_s", "duration_s", "segment", "segments",
              "segment_start_s", "segment_end_s", "warning", "error")
    drops = ("audio_bytes",)
    records = ("audio_hash", "fingerprint", "signature", "active_s", "warning")

    def setup(self) -> None:
        c = self.cfg
        self.max_duration_s: float = c["max_duration_s"]
        self.spill_mb: float = c["spill_mb"]
        self.whole_mb: float = c["whole_mb"]

    def _identify(self, uris: list[str], data: list) -> tuple:
        from operators.fingerprint import RATE, identify

        if len(uris) > 1:
            raise DecodeError("several_audio", ", ".join(uris), "a row with several audio items has no one identity")
        clip = decode(uris[0], data[0], RATE, max_duration_s=self.max_duration_s, spill_mb=self.spill_mb,
                      whole_mb=self.whole_mb)
        try:
            found = identify(clip.read(a, min(a + CHUNK, clip.samples)) for a in range(0, clip.samples, CHUNK))
            warn = (f"decode/silent: {uris[0]}: peak amplitude below {SILENCE_PEAK:g}" if clip.peak < SILENCE_PEAK
                    else None)
            return found, clip.duration, warn
        finally:
            clip.close()

    def process(self, batch: pa.Table) -> pa.Table:
        found, durations, warns, errs = [], [], [], []
        inline = batch.column("audio_bytes").to_pylist()
        for uris, data, err in zip(batch.column("audio_uris").to_pylist(), inline, errors(batch)):
            done, err = attempt(lambda: self._identify(uris, data), uris) if err is None else (None, err)
            ident, duration, warn = done or (None, None, None)
            found.append(ident)
            durations.append(duration)
            warns.append(warn)
            errs.append(err)
        n = batch.num_rows
        return put(batch, audio_hash=pa.array([i and i.audio_hash for i in found], pa.string()),
                   fingerprint=pa.array([i and i.fingerprint for i in found], pa.binary()),
                   signature=pa.array([i and (i.signature - (1 << 64) if i.signature >= 1 << 63 else i.signature)
                                       for i in found], pa.int64()),
                   active_s=pa.array([i and i.active_s for i in found], pa.float64()),
                   duration_s=pa.array(durations, pa.float64()), segment=pa.array([0] * n, pa.int32()),
                   segment_start_s=pa.array([None if d is None else 0.0 for d in durations], pa.float64()),
                   segment_end_s=pa.array(durations, pa.float64()),
                   segments=pa.array([1] * n, pa.int32()), warning=pa.array(warns, pa.string()),
                   error=pa.array(errs, pa.string()))


def apply(ds, cfg):
    """CPU actor pool (the config's `decode` actors) that gives each row its clip's identities."""
    from operators.config import decode_pool

    d = cfg.decode
    return ds.map_batches(
        Identify,
        fn_constructor_kwargs=dict(max_duration_s=d.max_duration_s, spill_mb=d.spill_mb, whole_mb=d.whole_mb),
        batch_format="pyarrow",
        batch_size=d.batch_size,
        compute=actors(decode_pool(cfg)),
        num_cpus=d.num_cpus,
    )
