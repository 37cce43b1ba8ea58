"""Gather another job's rows by clip window for a text LLM to rewrite (jobs.rewrite): the stage after reading.

A caption or AQA output holds one row per clip window and prompt. Ray Data groups them by window (a
shuffle: a window's rows may lie in several parts) and this stage makes each group one row: the answers it
can use (no error, kept by quality) as `sources`, the rewrite template filled with them and with the row's
own columns as `prompt`, the reference text CLAP compares with, and the rows it was made from (`input_part`,
`input_row`: lists), by which the ledger knows, on a resume and on the next night, which of the input's rows
are done. A window none of whose answers is usable is an error row saying why each was not.
"""
from __future__ import annotations

import json

import pyarrow as pa

from operators.prompt import TEMPLATE, fill
from operators.stage import LIGHT_CPUS, Stage, actors, put

KEY = ["source_manifest", "source_row", "segment"]
# The columns of one answer (a prompt's row), not of its window: the gathered row leaves them out.
ANSWER = ("output_id", "prompt_id", "prompts", "prompt", "error", "warning", "model", "sampling", "run_id",
          "created_at", "finish_reason", "prompt_tokens", "output_tokens", "flags", "keep", "candidates",
          "candidate_scores", "clap_score", "input_part", "input_row")
ANSWERS = "answers"  # {answers.<prompt id>} and {answers} in a template
REWRITE = "rewrite"  # the prompt id of a rewrite's rows


def as_list(value) -> list | None:
    """A column's value as a list, where it holds one (a list is JSON text in a job's output)."""
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, list) else None


def as_text(value) -> str | None:
    """A column's value as template text: a list as "a, b, c"."""
    items = as_list(value)
    if items is not None:
        return ", ".join(str(v) for v in items)
    return None if value is None else str(value)


def labels_of(value) -> list[str]:
    """A labels column's value as a list: a list (AudioSet's labels have commas of their own), or "a, b, c"."""
    items = as_list(value)
    if items is not None:
        return [str(v) for v in items]
    return [v.strip() for v in str(value).split(",") if v.strip()] if value else []


class Gather(Stage):
    reads = (*KEY, "prompt_id", "error", "input_part", "input_row")
    writes = ("sources", "prompt", "reference", "transcript", "labels_list", "prompt_id", "prompts", "error",
              "input_part", "input_row")

    def setup(self) -> None:
        self.column: str = self.cfg["source_column"]  # the input's text: caption, answer or text
        self.template: str = self.cfg["template"]
        self.reference: str | None = self.cfg["reference"]
        self.transcript: str | None = self.cfg["transcript"]
        self.labels: str | None = self.cfg["labels"]

    def _why_not(self, row: dict) -> str | None:
        if row["error"] is not None:
            return row["error"]
        if row.get("keep") is False:
            return f"not kept by quality (flags: {', '.join(row.get('flags') or [])})"
        if not (row[self.column] or "").strip():
            return "empty"
        return None

    def process(self, group: pa.Table) -> pa.Table:
        rows = sorted(group.to_pylist(), key=lambda r: r["prompt_id"] or "")
        usable = {r["prompt_id"]: r[self.column].strip() for r in rows if self._why_not(r) is None}
        first = rows[0]
        uri = first.get("audio") or first.get("id")
        answer = (*ANSWER, self.column)  # the columns of one answer, not of its window
        values = {**{k: as_text(v) for k, v in first.items() if k not in answer},
                  ANSWERS: "\n".join(usable.values()),
                  **{f"{ANSWERS}.{r['prompt_id']}": usable.get(r["prompt_id"], "") for r in rows}}
        error = prompt = reference = None
        if not usable:
            error = (f"rewrite/no_answers: {uri} window {first['segment']}: none of its {len(rows)} answers is usable: "
                     + "; ".join(f"{r['prompt_id']}: {self._why_not(r)}" for r in rows))
        else:
            try:
                prompt = fill(self.template, values, TEMPLATE)
                reference = fill(self.reference, values, TEMPLATE) if self.reference else None
            except KeyError as e:
                error = (f"rewrite/missing_field: {uri} window {first['segment']}: the row has no value for "
                         f"{e.args[0]!r}, which the template names")
        transcript = None
        if self.transcript:
            transcript = usable.get(self.transcript) or values.get(self.transcript)
        window = group.select([c for c in group.column_names if c not in answer]).slice(0, 1)
        new = {"sources": [[{"prompt_id": p, "text": t} for p, t in usable.items()]], "prompt": [prompt],
               "reference": [reference], "transcript": [transcript],
               "labels_list": [labels_of(first.get(self.labels)) if self.labels else []], "prompt_id": [REWRITE],
               "prompts": [1], "error": [error], "input_part": [[r["input_part"] for r in rows]],
               "input_row": [[r["input_row"] for r in rows]]}
        return put(window, **{k: pa.array(v, TYPES[k]) for k, v in new.items()})


TYPES = {"sources": pa.list_(pa.struct([("prompt_id", pa.string()), ("text", pa.string())])), "prompt": pa.string(),
         "reference": pa.string(), "transcript": pa.string(), "labels_list": pa.list_(pa.string()),
         "prompt_id": pa.string(), "prompts": pa.int32(), "error": pa.string(), "input_part": pa.list_(pa.string()),
         "input_row": pa.list_(pa.int64())}


def apply(ds, cfg, source_column: str):
    """One row per clip window, materialized: the shuffle runs before the engine's actors start. Its tasks take
    whole CPUs, and a pipeline whose actors hold a small box's cores would leave them none (it hangs); after
    it, the windows are text rows, small beside their audio. Partitions: `read.blocks_per_cpu` per CPU."""
    import ray

    r = cfg.rewrite
    partitions = max(1, int(cfg.read.blocks_per_cpu * ray.cluster_resources().get("CPU", 1)))
    return ds.groupby(KEY, num_partitions=partitions).map_groups(
        Gather, fn_constructor_kwargs=dict(source_column=source_column, template=r.template, reference=r.reference,
                                           transcript=r.accept.transcript, labels=r.accept.labels),
        batch_format="pyarrow", compute=actors(1), num_cpus=LIGHT_CPUS).materialize()
