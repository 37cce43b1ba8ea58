"""A job's rows as a Hugging Face dataset: each row's own window of audio, its split, its text.

A row with no error, and `keep` true where quality flags exist, goes to a split (train/validation/test by
`export.splits`) chosen by a seeded hash of its source clip, so that the windows and prompts of one clip,
and the copies dedup found of it (`duplicate_of`), never straddle two splits. Its `audio` becomes the
window it was captioned from (`segment_start_s`..`segment_end_s` of the source), mono at
`export.sample_rate`, as FLAC bytes in the datasets Audio struct: the audio a caption describes is the
audio in its row. The source URI moves to `source_audio`. Every other row goes to the split `dropped`
with no audio, so that every row read is accounted for (and a resume finds it done).

The schema carries `datasets`' own feature metadata (Audio at the sample rate), so `load_dataset` decodes
the column with no glue code.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import copies, write
from operators.decode import Decode
from operators.generate import Generate
from operators.identity import Identify
from operators.prompt import Prompt
from operators.quality import Quality
from operators.score import Score
from operators.stage import Stage, actors, declared, dropped, put

DROPPED = "dropped"
# What records how a row was made, not part of a training row.
INTERNAL = declared("records", Decode, Identify, Prompt, Generate, Score, Quality, copies.COLUMNS, write.COLUMNS)


def split_of(key: str, seed: int, splits: dict[str, float]) -> str:
    """The split of a source clip: a seeded hash of its key, placed on the splits' cumulative fractions."""
    x = int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "little") / 2 ** 64
    total = 0.0
    for name, fraction in splits.items():
        total += fraction
        if x < total:
            return name
    return name


def flac(wave: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def features(schema: pa.Schema, rate: int):
    """datasets Features of an export table: Audio for `audio`, the rest as their Arrow types say."""
    import datasets

    rest = datasets.Features.from_arrow_schema(pa.schema([f for f in schema if f.name != "audio"]))
    return datasets.Features({"audio": datasets.Audio(sampling_rate=rate), **rest})


class Export(Stage):
    reads = ("audio", "segment_start_s", "segment_end_s", "error", "id")
    writes = ("audio", "source_audio", "split")

    def setup(self) -> None:
        self.rate: int = self.cfg["sample_rate"]
        self.seed: int = self.cfg["seed"]
        self.splits: dict[str, float] = self.cfg["splits"]

    def _row(self, uri, start, end, error, keep) -> tuple[dict | None, str, str | None]:
        """(audio struct, split, error) of one row."""
        from operators.decode import DecodeError, window

        if error is not None:
            return None, DROPPED, error
        if keep is False:
            return None, DROPPED, None
        if uri.startswith("["):  # question answering: the JSON list of several clips
            return None, DROPPED, f"export/several_audio: {uri}: a row with several audio items has no one window"
        try:
            wave = window(uri, start, end, self.rate)
        except DecodeError as e:
            return None, DROPPED, str(e).replace("decode/", "export/", 1)
        return {"bytes": flac(wave, self.rate), "path": f"{uri}#{start:.3f}-{end:.3f}"}, "", None

    def process(self, batch: pa.Table) -> pa.Table:
        names = batch.column_names
        audio = pc.cast(batch["audio"], pa.string()) if not pa.types.is_string(batch["audio"].type) else batch["audio"]
        keep = batch["keep"].to_pylist() if "keep" in names else [None] * batch.num_rows
        clips = batch["duplicate_of"] if "duplicate_of" in names else pa.nulls(batch.num_rows, pa.string())
        keys = pc.coalesce(clips, batch["id"]).to_pylist()  # a clip and its copies: one key
        structs, splits, errs = [], [], []
        for uri, start, end, error, k, key in zip(audio.to_pylist(), batch["segment_start_s"].to_pylist(),
                                                  batch["segment_end_s"].to_pylist(), batch["error"].to_pylist(),
                                                  keep, keys):
            struct, split, error = self._row(uri, start, end, error, k)
            structs.append(struct)
            splits.append(split or split_of(key, self.seed, self.splits))
            errs.append(error)
        out = batch.rename_columns(["source_audio" if c == "audio" else c for c in names])
        out = dropped(out, INTERNAL)
        out = put(out, audio=pa.array(structs, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                  error=pa.array(errs, pa.string()), split=pa.array(splits, pa.string()))
        out = out.select(["audio", *[c for c in out.column_names if c != "audio"]])
        schema = features(out.drop_columns(["split"]).schema, self.rate).arrow_schema
        return out.cast(schema.append(pa.field("split", pa.string())).with_metadata(schema.metadata))


def apply(ds, cfg):
    e = cfg.export
    return ds.map_batches(
        Export,
        fn_constructor_kwargs=dict(sample_rate=e.sample_rate, seed=e.seed, splits=dict(e.splits)),
        batch_format="pyarrow",
        batch_size=cfg.write.rows_per_file,
        compute=actors(e.concurrency),
        num_cpus=e.num_cpus,
    )
