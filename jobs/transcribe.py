"""Transcribe every audio clip of a manifest with a speech model (Whisper).

    python -m jobs.transcribe --config configs/transcribe.yaml [--input URI] [--output URI] [key=value ...]

Clips longer than the model's 30 s window come out as one row per window (`segment`, `segment_start_s`,
`segment_end_s`), cut in a pause near each window's end so words stay whole; `clips/` in the output holds
one row per source clip with its windows' texts joined in order.
"""
from __future__ import annotations

import sys

from jobs.runner import Job, main
from operators import decode, generate, prompt, stitch
from operators.quality import TRANSCRIPT as COLUMN  # a transcript's language rule reads the row's `language`


def build(ds, cfg, spec, prompts, column):
    ds = decode.apply(ds, cfg, spec)
    ds = prompt.apply(ds, cfg, spec, prompts, conversations=False)  # a window asked K prompts: K rows after the engine
    return generate.apply(ds, cfg, spec, column)


JOB = Job(COLUMN, build, finish=stitch.finish)

if __name__ == "__main__":
    sys.exit(main(JOB, __doc__))
