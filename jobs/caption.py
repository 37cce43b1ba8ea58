"""Caption every audio clip of a manifest with an audio-language model.

    python -m jobs.caption --config configs/caption.yaml [--input URI] [--output URI] [key=value ...]
"""
from __future__ import annotations

import sys

from operators import decode, generate, prompt

COLUMN = "caption"


def build(ds, cfg, spec):
    ds = decode.apply(ds, cfg, spec)
    ds = prompt.apply(ds, cfg, spec)
    return generate.apply(ds, cfg, spec, COLUMN)


if __name__ == "__main__":
    from jobs.runner import main

    sys.exit(main(build, COLUMN, __doc__))
