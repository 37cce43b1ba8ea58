"""Caption every audio clip of a manifest with an audio-language model.

    python -m jobs.caption --config configs/caption.yaml [--input URI] [--output URI] [key=value ...]
"""
from __future__ import annotations

import sys

from jobs.runner import Job, main
from operators import decode, generate, prompt

COLUMN = "caption"


def build(ds, cfg, spec, prompts, column):
    ds = decode.apply(ds, cfg, spec)
    ds = prompt.apply(ds, cfg, spec, prompts, conversations=False)  # a window asked K prompts: K rows after the engine
    return generate.apply(ds, cfg, spec, column)


JOB = Job(COLUMN, build)

if __name__ == "__main__":
    sys.exit(main(JOB, __doc__))
