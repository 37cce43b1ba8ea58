"""Quality flags on what the engine wrote, and the best of several candidates: the stage after generate.

Each rule of the quality config (configs/rules.yaml, changed per job and per prompt) is a named flag. A row
gets `flags`, the rules it trips, and `keep`, true when it has no error and no flag whose rule drops rows.
Rows are never removed: the stage only marks them, so thresholds can be changed later and re-checked with
`jobs.quality` without generating again.

With `sampling.n` > 1 the row arrives with all its candidates (`candidates`, `finish_reasons`, and
`candidate_scores` when CLAP scored them): the stage flags each, keeps the best by `quality.select` as the
row's text and leaves the others in `candidates`, so nothing generated is thrown away.
"""
from __future__ import annotations

import re

import pyarrow as pa

from operators.stage import Stage, actors, put

WORD = re.compile(r"\w+", re.UNICODE)
TRANSCRIPT = "text"  # jobs.transcribe's column: its rows' language rule reads the row's `language`


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def is_loop(text: str, rule) -> bool:
    """Repetition: few distinct words, a run of the same 1..max_ngram words, or a word made of one repeated
    piece ("passpasspass")."""
    words = words_of(text)
    if len(words) >= rule.min_words and len(set(words)) / len(words) <= rule.max_unique_ratio:
        return True
    for n in range(1, rule.max_ngram + 1):
        k = rule.min_repeats if n == 1 else rule.min_phrase_repeats
        for i in range(len(words) - n * k + 1):
            if all(words[i + j * n:i + (j + 1) * n] == words[i:i + n] for j in range(1, k)):
                return True
    piece = re.compile(r"(.{2,}?)\1{%d,}" % (rule.min_token_repeats - 1), re.UNICODE)
    for token in text.split():
        m = piece.search(token) if len(token) >= rule.min_token_chars else None
        if m and m.end() - m.start() >= 0.8 * len(token):
            return True
    return False


# Scripts written without spaces between words: a run of them is not one long word.
UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")


def has_long_word(text: str, rule) -> bool:
    words = [re.sub(r"^\W+|\W+$", "", w) for w in text.split() if not UNSPACED.search(w)]
    lengths = sorted((len(w) for w in words if w), reverse=True)
    if not lengths:
        return False
    return lengths[0] >= rule.max_chars or (len(lengths) > 1 and lengths[0] >= rule.ratio_min_chars
                                            and lengths[0] >= rule.ratio * lengths[1])


def plain(text: str) -> str:
    return " ".join(words_of(text))


class Row:
    """What the rules may look at besides the text."""

    __slots__ = ("seconds", "speech_s", "silent", "finish_reason", "score", "accepted", "language")

    def __init__(self, seconds, speech_s, silent, finish_reason, score, accepted=None, language=None):
        self.seconds, self.speech_s, self.silent = seconds, speech_s, silent
        self.finish_reason, self.score, self.accepted = finish_reason, score, accepted
        self.language = language  # the row's spoken language, where the job knows it (multilingual Whisper)


def flags(text: str | None, rules, row: Row, language=None) -> list[str]:
    """The names of the rules `text` trips, in the rules' order."""
    text = text or ""
    words, low = words_of(text), text.lower()
    checks = {
        "empty": lambda r: not text.strip(),
        "too_short": lambda r: bool(text.strip()) and len(words) < r.min_words,
        "too_long": lambda r: len(words) > r.max_words,
        "loop": lambda r: is_loop(text, r),
        "long_word": lambda r: has_long_word(text, r),
        "fast_text": lambda r: bool(row.seconds) and len(text.strip()) / row.seconds > r.max_chars_per_s,
        "refusal": lambda r: any(p in low for p in r.phrases),
        "banned": lambda r: any(p in low for p in r.phrases),
        "hallucination": lambda r: bool(text.strip()) and plain(text) in {plain(p) for p in r.phrases},
        "language": lambda r: _wrong_language(text, words, r, language, row.language),
        "silent_text": lambda r: row.silent and bool(text.strip()),
        "no_speech": lambda r: row.speech_s is not None and row.speech_s < r.min_speech_s and bool(text.strip()),
        "truncated": lambda r: row.finish_reason == "length",
        "low_clap": lambda r: row.score is not None and row.score < r.min_score,
        "rejected": lambda r: row.accepted is False,
    }
    return [name for name, check in checks.items() if getattr(rules, name).enabled and check(getattr(rules, name))]


def _wrong_language(text: str, words: list[str], rule, identifier, spoken: str | None) -> bool:
    """Whether the text is not in the row's spoken language (where the row says it), else `rule.expected`."""
    expected = spoken or rule.expected
    if expected is None or identifier is None:
        return False
    # Scripts without spaces (Chinese, Japanese) are one "word" per run: count characters there.
    if max(len(words), len(text.strip()) // 4) < rule.min_words:
        return False
    return dict(identifier.rank(text)).get(expected, 0.0) < 1 - rule.min_confidence


def dropping(names: list[str], rules) -> bool:
    return any(getattr(rules, n).drop for n in names)


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
    writes = ("flags", "keep")  # with candidates: the text column, finish_reason, clap_score, candidates ...

    def written(self) -> set[str]:
        return {*self.writes, self.column, "finish_reason", "clap_score", "candidates", "candidate_scores"}

    def setup(self) -> None:
        from operators.config import Rules

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
                o["flags"] = flags(o["text"], rules, Row(seconds, speech[i], silent, o["reason"], o["score"],
                                                         accepted[i], spoken[i]), self.language)
                o["dropping"] = dropping(o["flags"], rules)
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
            batch = batch.drop_columns([c for c in ("finish_reasons",) if c in batch.column_names])
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
