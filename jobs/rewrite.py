"""Rewrite another job's answers with a text LLM: one new text per clip window, tested and retried.

    python -m jobs.rewrite --config configs/recipes/<recipe>-rewrite.yaml --input <a caption or aqa output> \
        --output <folder> [key=value ...]

The input holds one row per clip window and prompt (a caption job asked several prompts, say). Each window's
usable answers (no error, kept by quality) fill `rewrite.template` by prompt name (`{answers.speech}`), all
together (`{answers}`) and with the row's own columns (`{labels}`); a text LLM (`model`, a registry text family
or an audio family run as a text model) writes the new text into `rewrite.column`. Each output row keeps
`sources` (the answers it was made from), `prompt` (what the text model was given), model and sampling, and
with CLAP (`score.enabled`) `clap_score` and `clap_reference` (the score of `rewrite.reference`, e.g. the
labels). `rewrite.accept` tests each try; a rejected one is rewritten up to `rewrite.max_tries` times, the row
keeps the best and says how many were made (`tries`). The quality rules then flag it as any caption
(`rejected`: it failed the test on every try). Resumable like every job; in a night it is a step like any.
"""
from __future__ import annotations

import sys

from jobs.runner import Job, main, text_column
from operators import chat, gather, read, rewrite
from operators.config import ConfigError
from operators.prompt import TEMPLATE, fields

# The columns every generated row has, whatever its manifest held: a template may name them.
WINDOW = {"id", "audio", "duration_s", "segment", "segments", "segment_start_s", "segment_end_s", "speech_s"}


def build(ds, cfg, spec, prompts, column):
    source = text_column(read.expand(cfg.input))
    ds = gather.apply(ds, cfg, source)
    text = spec.as_text()
    ds = chat.apply(ds, cfg, text)
    return rewrite.apply(ds, cfg, text, column)


def verify(cfg, prompt_ids: list[str] | None, columns: set[str] | None) -> None:
    """The answers and columns the template, the reference and the guards name, against the input's prompts and
    columns: a name it lacks fails before any work, naming it."""
    r = cfg.rewrite
    named = [("rewrite.template", f) for f in fields(r.template, TEMPLATE)]
    named += [("rewrite.reference", f) for f in fields(r.reference or "", TEMPLATE)]
    named += [(f"rewrite.accept.{k}", v) for k, v in (("labels", r.accept.labels),) if v]
    for key, name in named:
        head, _, prompt = name.partition(".")
        if head == gather.ANSWERS:
            if prompt and prompt_ids is not None and prompt not in prompt_ids:
                raise ConfigError(f"{key}: {{{name}}} names the answers of prompt {prompt!r}, which the input was not "
                                  f"asked; its prompts: {', '.join(prompt_ids)}")
        elif columns is not None and name not in columns | WINDOW:
            raise ConfigError(f"{key}: {{{name}}} names a column the input does not have; its columns: "
                              f"{', '.join(sorted(columns - set(gather.ANSWER)))}")
    t = r.accept.transcript
    if t and prompt_ids is not None and columns is not None and t not in prompt_ids and t not in columns:
        raise ConfigError(f"rewrite.accept.transcript: {t!r} is neither a prompt the input was asked "
                          f"({', '.join(prompt_ids)}) nor one of its columns")


JOB = Job(lambda cfg: cfg.rewrite.column, build, derived=True, gathers=True, scored=True, verify=verify,
          determines=("model", "rewrite", "sampling", "quality", "score"))

if __name__ == "__main__":
    sys.exit(main(JOB, __doc__))
