"""Quality flags on what the engine wrote, and the best of several candidates: the stage after generate.

Each rule (operators/rules.py; configs/rules.yaml, changed per job and per prompt) is a named flag. A row
gets `flags`, the rules it trips, and `keep`, true when it has no error and no flag whose rule drops rows.
Rows are never removed: the stage only marks them, so thresholds can be changed later and re-checked with
`jobs.quality` without generating again.

With `sampling.n` > 1 the row arrives with all its candidates (`candidates`, `finish_reasons`, and
`candidate_scores` when CLAP scored them): the stage flags each, keeps the best by `quality.select` as the
row's text and leaves the others in `candidates`, so nothing generated is thrown away.
"""
from __future__ import annotations

import pyarrow as pa

from operators.rules import Row
from operators.stage import Stage, actors, dropped, put

TRANSCRIPT = "text"  # jobs.transcribe's column: its rows' language rule reads the row's `language`


def best(candidates: list[dict], select: str) -> int:
    """Index of the candidate to keep: highest CLAP score, or fewest dropping flags, then fewest flags, then
    the shortest text (ties: the first, the engine's own first sample)."""
    if select == "clap_score":
        return max(range(len(candidates)), key=lambda i: (candidates[i]["score"] if candidates[i]["score"] is not None
                                                          else float("-inf"), -i))
    return min(range(len(candidates)), key=lambda i: (candidates[i]["dropping"], len(candidates[i]["flags"]),
                                                       len(candidates[i]["text"] or ""), i))


class Quality(Stage):
    reads = ("error",)  # and the job's text column; segment times, speech_s, warning, finish_reason, accepted when present
    # with candidates also the best one's: the text column, finish_reason, clap_score, and the others in order
    writes = ("flags", "keep", "finish_reason", "clap_score", "candidates", "candidate_scores")
    records = ("keep", "finish_reason", "candidates", "candidate_scores")

    def written(self) -> set[str]:
        return {*self.writes, self.column}

    def setup(self) -> None:
        from operators.rules import Rules

        self.column: str = self.cfg["column"]
        self.select: str = self.cfg["select"]
        self.rules = {k: Rules.model_validate(v) for k, v in self.cfg["rules"].items()}
        self.language = None
        if any(r.language.enabled for r in self.rules.values()):  # expected, or a row's own `language`
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self.language = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def _column(self, batch: pa.Table, name: str) -> list:
        return batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows

    def process(self, batch: pa.Table) -> pa.Table:
        col = self._column
        texts, errors, prompt_ids = col(batch, self.column), col(batch, "error"), col(batch, "prompt_id")
        starts, ends = col(batch, "segment_start_s"), col(batch, "segment_end_s")
        speech, warnings, reasons, scores = (col(batch, "speech_s"), col(batch, "warning"), col(batch, "finish_reason"),
                                             col(batch, "clap_score"))
        accepted = col(batch, "accepted")  # a rewrite's acceptance test
        # The row's spoken language (multilingual Whisper) is a transcript's; a caption's or an answer's is the prompt's.
        spoken = col(batch, "language") if self.cfg["transcripts"] else [None] * batch.num_rows
        several = "candidates" in batch.column_names
        fresh = "finish_reasons" in batch.column_names
        cands, cand_reasons, cand_scores = (col(batch, "candidates"), col(batch, "finish_reasons"),
                                            col(batch, "candidate_scores"))
        out = {"flags": [], "keep": []}
        chosen = {self.column: [], "finish_reason": [], "clap_score": [], "candidates": [], "candidate_scores": []}
        for i in range(batch.num_rows):
            rules = self.rules.get(prompt_ids[i] or "", self.rules[""])
            seconds = ends[i] - starts[i] if ends[i] is not None and starts[i] is not None else None
            silent = (warnings[i] or "").startswith("decode/silent")
            if errors[i] is not None:
                out["flags"].append([])
                out["keep"].append(False)
                for k, v in zip(chosen, (texts[i], reasons[i], scores[i], cands[i], cand_scores[i])):
                    chosen[k].append(v)
                continue
            options = [{"text": texts[i], "reason": reasons[i], "score": scores[i]}]
            if several and cands[i]:
                n = len(cands[i])
                others = [{"text": t, "reason": r, "score": x} for t, r, x in
                          zip(cands[i], cand_reasons[i] or [None] * n, cand_scores[i] or [None] * n)]
                # Straight from generate `candidates` holds all n; in an output (jobs.quality) the others.
                options = others if fresh else options + others
            for o in options:
                o["flags"] = rules.flags(o["text"], Row(seconds, speech[i], silent, o["reason"], o["score"],
                                                        accepted[i], spoken[i]), self.language)
                o["dropping"] = rules.dropping(o["flags"])
            k = best(options, self.select) if len(options) > 1 else 0
            out["flags"].append(options[k]["flags"])
            out["keep"].append(not options[k]["dropping"])
            others = options[:k] + options[k + 1:]
            for name, v in ((self.column, options[k]["text"]), ("finish_reason", options[k]["reason"]),
                            ("clap_score", options[k]["score"]), ("candidates", [o["text"] for o in others]),
                            ("candidate_scores", [o["score"] for o in others])):
                chosen[name].append(v)
        batch = put(batch, flags=pa.array(out["flags"], pa.list_(pa.string())), keep=pa.array(out["keep"], pa.bool_()))
        if several:  # the kept candidate becomes the row's text; the others stay, with their scores
            batch = put(batch, **{self.column: pa.array(chosen[self.column], pa.string())},
                        finish_reason=pa.array(chosen["finish_reason"], pa.string()),
                        candidates=pa.array(chosen["candidates"], pa.list_(pa.string())))
            if "clap_score" in batch.column_names:
                batch = put(batch, clap_score=pa.array(chosen["clap_score"], pa.float64()),
                            candidate_scores=pa.array(chosen["candidate_scores"], pa.list_(pa.float64())))
            batch = dropped(batch, ("finish_reasons",))
        return batch


def apply(ds, cfg, column: str, rules: dict, whole: bool = False):
    """Actors that flag every row (the language detector loads once per actor). They reserve no CPU: the
    checks are light, and on a box whose cores the decode and engine actors hold, a reservation here would
    leave none for the read tasks and the pipeline would wait forever."""
    return ds.map_batches(
        Quality,
        fn_constructor_kwargs=dict(column=column, select=cfg.quality.select, transcripts=column == TRANSCRIPT,
                                   rules={k: v.model_dump() for k, v in rules.items()}),
        batch_format="pyarrow",
        batch_size=None if whole else cfg.write.rows_per_file,  # whole: blocks as they come, never cut
        compute=actors(cfg.quality.concurrency),
        num_cpus=0,
    )
