"""Answer the conversation of every manifest row (audio question answering) with an audio-language model.

    python -m jobs.aqa --config configs/aqa.yaml [--input URI] [--output URI] [key=value ...]

Rows come as DataFlow-MM writes them (`audio` list + `conversation` of {from, value} turns with `<audio>`
markers) or as OpenAI/HF chat `messages` with audio content items; earlier assistant turns are context.
The configured system prompt applies to rows whose conversation has none. Rows without a conversation
are asked the prompts `prompt.use` names, if any. The answer goes to `answer`.
"""
from __future__ import annotations

import sys

from jobs.runner import Job, main
from operators import decode, generate, prompt

COLUMN = "answer"


def build(ds, cfg, spec, prompts, column):
    ds = decode.apply(ds, cfg, spec)
    ds = prompt.apply(ds, cfg, spec, prompts, conversations=True)
    return generate.apply(ds, cfg, spec, column)


JOB = Job(COLUMN, build, conversations=True)

if __name__ == "__main__":
    sys.exit(main(JOB, __doc__))
