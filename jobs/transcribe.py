"""Transcribe every audio clip of a manifest with a speech model (Whisper).

    python -m jobs.transcribe --config configs/transcribe.yaml [--input URI] [--output URI] [key=value ...]

Clips longer than the model's 30 s window come out as one row per window (`segment`, `segment_start_s`,
`segment_end_s`), cut at the quietest moment near each window's end so words stay whole.
"""
from __future__ import annotations

import sys

from operators import decode, generate, prompt

COLUMN = "text"


def build(ds, cfg, spec):
    ds = decode.apply(ds, cfg, spec)
    ds = prompt.apply(ds, cfg, spec)
    return generate.apply(ds, cfg, spec, COLUMN)


if __name__ == "__main__":
    from jobs.runner import main

    sys.exit(main(build, COLUMN, __doc__))
