"""Rewrite each clip window's answers with a text LLM and test what it wrote (jobs.rewrite): the engine stage.

It is the generate stage (the same engine, retries of lost engines, stall watch) with an acceptance test after
each try: CLAP's score of the text against the window's audio at least its reference text's (AudioSetCaps
accepts a caption only if it matches the audio as well as the clip's labels do), an absolute floor, and
content guards: a text that quotes the clip's transcript, or lists its labels as they were given, fails. A
rejected try is rewritten with a new seed, up to `rewrite.max_tries`; the row keeps its best try (accepted
first, then the highest score) and says how many were made (`tries`) and why the kept one failed (`rejected`).
With `rewrite.diverse` = k it keeps the k best distinct texts as k rows (`prompt_id` rewrite-1 ... rewrite-k),
as SonicCaps keeps many diverse captions per clip; tries go on until k distinct texts pass.

CLAP runs in this actor, loaded after the engine took its memory (vLLM sizes its cache from what is free when
it starts), so a try is judged as soon as it is written, with no round trip through another pool. A window's
audio is embedded once per row, its reference text once.
"""
from __future__ import annotations

import asyncio
import functools

import pyarrow as pa

from operators.generate import Generate, warned
from operators.rules import plain, words_of
from operators.gather import REWRITE
from operators.stage import errors, put

CLAP_RATE = 48_000  # the rate windows are decoded at for CLAP (its feature extractor's)
WORKING = ("transcript", "labels_list")  # what the gather stage gave this one only


def quotes(text: str, transcript: str, n: int) -> bool:
    """Whether `text` repeats n consecutive words of `transcript`."""
    said = words_of(transcript)
    grams = {tuple(said[i:i + n]) for i in range(len(said) - n + 1)}
    words = words_of(text)
    return any(tuple(words[i:i + n]) in grams for i in range(len(words) - n + 1))


def lists(text: str, labels: list[str]) -> bool:
    """Whether `text` lists two or more labels as given, in their order ("Speech, Dog, Bark")."""
    return len(labels) > 1 and f" {plain(', '.join(labels))} " in f" {plain(text)} "


class Rewrite(Generate):
    reads = ("prompt_text", "error", "reference", *WORKING)  # and `audio` with the window's times when scoring
    writes = (*Generate.writes, "tries", "accepted", "rejected", "clap_score", "clap_reference", "prompt_id", "prompts")
    drops = WORKING  # what the window's texts were judged by; the row keeps `sources` and `prompt`

    def setup(self) -> None:
        super().setup()
        self.accept: dict = self.cfg["accept"]
        self.max_tries: int = self.cfg["max_tries"]
        self.diverse: int = self.cfg["diverse"]
        self.clap = None
        if self.cfg["clap"]:
            from operators.score import Score

            self.clap = Score(column=self.column, sample_rate=CLAP_RATE, **self.cfg["clap"])

    def judge(self, text: str, score: float | None, reference: float | None, transcript: str | None,
              labels: list[str]) -> list[str]:
        """Why a try fails the acceptance test: [] when it passes."""
        a, why = self.accept, []
        if not (text or "").strip():
            why.append("empty")
        if a["above_reference"] and score is not None and reference is not None and score < reference:
            why.append(f"CLAP {score:.3f} below its reference's {reference:.3f}")
        if a["min_clap"] is not None and score is not None and score < a["min_clap"]:
            why.append(f"CLAP {score:.3f} below rewrite.accept.min_clap={a['min_clap']:g}")
        if transcript and quotes(text, transcript, a["quote_words"]):
            why.append(f"quotes {a['quote_words']} words of the transcript")
        if lists(text, labels):
            why.append("lists the labels as given")
        return why

    def seeded(self, attempt: int):
        """The sampling of try `attempt`: a new seed after the first (none set: every request draws its own)."""
        if attempt == 0 or self.sampling.seed is None:
            return self.sampling
        params = self.sampling.clone()
        params.seed = self.sampling.seed + attempt
        return params

    def scores(self, texts: list[str], audio) -> list[float | None]:
        if audio is None:
            return [None] * len(texts)
        return [float(x) for x in self.clap.embed_text([t or "" for t in texts]) @ audio]

    async def _tries(self, prompt: str, audio, reference: float | None, transcript: str | None, labels: list[str]):
        """The window's `diverse` rows: (text, finish reason, score, why it failed) each, best first; tokens in and
        out, the engines lost, the tries made. Tries go on until `diverse` distinct texts pass, or `max_tries`."""
        tried, n_in, n_out, lost = {}, 0, 0, []
        for attempt in range(self.max_tries):
            texts, reasons, p, o, warn = await self._one(prompt, None, self.seeded(attempt))
            n_in, n_out, lost = n_in + p, n_out + o, lost + [warn] * bool(warn)
            scores = await asyncio.to_thread(self.scores, texts, audio)
            for text, reason, score in zip(texts, reasons, scores):
                why = self.judge(text, score, reference, transcript, labels)
                rank = (not why, float("-inf") if score is None else score)
                key = plain(text or "")  # distinct texts: the same words are one text
                if key not in tried or rank > tried[key][0]:
                    tried[key] = (rank, text, reason, score, why)
            if sum(1 for t in tried.values() if not t[4]) >= self.diverse:
                break
        best = sorted(tried.values(), key=lambda t: t[0], reverse=True)[:self.diverse]
        return [t[1:] for t in best], n_in, n_out, "; ".join(lost) or None, attempt + 1

    async def __call__(self, batch: pa.Table) -> pa.Table:
        self.needs(batch)
        self._watching()
        n, errs = batch.num_rows, errors(batch)
        audio, refs = [None] * n, [None] * n
        if self.clap is not None:
            waves = await asyncio.to_thread(self.clap.waves, batch)
            rows = [i for i, w in enumerate(waves) if w is not None]
            if rows:
                embedded = await asyncio.to_thread(self.clap.embed_audio, [waves[i] for i in rows])
                for j, i in enumerate(rows):
                    audio[i] = embedded[j]
            refs_text = batch.column("reference").to_pylist()
            for i in rows:
                if refs_text[i]:
                    refs[i] = (await asyncio.to_thread(self.scores, [refs_text[i]], audio[i]))[0]
        where = batch.column("audio").to_pylist() if "audio" in batch.column_names else batch.column("id").to_pylist()
        rows = zip(batch.column("prompt_text").to_pylist(), audio, refs, batch.column("transcript").to_pylist(),
                   batch.column("labels_list").to_pylist(), errs, where)
        results = await asyncio.gather(*(self._safe(functools.partial(self._tries, p, a, r, t, lb), e, [str(w)])
                                         for p, a, r, t, lb, e, w in rows))
        # k rows a window (rewrite.diverse), all in this batch, so that one commit holds a window's rows.
        k = self.diverse
        take, cols = [], {c: [] for c in ("text", "reason", "score", "why", "n_in", "n_out", "lost", "tries", "error",
                                          "ids")}
        for i, (done, error) in enumerate(results):
            kept, n_in, n_out, lost, tries = done or ([], None, None, None, None)
            short = (f"rewrite/not_diverse: {where[i]}: {len(kept)} distinct texts in {tries} tries, where "
                     f"rewrite.diverse={k} are kept")
            for j in range(k):
                text, reason, score, why = kept[j] if j < len(kept) else (None, None, None, None)
                take.append(i)
                for c, v in zip(cols, (text, reason, score, "; ".join(why) if why else None, n_in if j == 0 else 0,
                                      n_out if j == 0 else 0, lost, tries,
                                      error or (short if j >= len(kept) else None),
                                      REWRITE if k == 1 else f"{REWRITE}-{j + 1}")):
                    cols[c].append(v)
        out = batch.take(pa.array(take, pa.int64()))
        out = put(out, **{self.column: pa.array(cols["text"], pa.string())},
                  finish_reason=pa.array(cols["reason"], pa.string()), prompt_tokens=pa.array(cols["n_in"], pa.int32()),
                  output_tokens=pa.array(cols["n_out"], pa.int32()), tries=pa.array(cols["tries"], pa.int32()),
                  accepted=pa.array([None if e else w is None for w, e in zip(cols["why"], cols["error"])], pa.bool_()),
                  rejected=pa.array(cols["why"], pa.string()), clap_score=pa.array(cols["score"], pa.float64()),
                  clap_reference=pa.array([refs[i] for i in take], pa.float64()),
                  error=pa.array(cols["error"], pa.string()), prompt_id=pa.array(cols["ids"], pa.string()),
                  prompts=pa.array([k] * len(take), pa.int32()))
        return self.done(batch, warned(out, cols["lost"]))


def apply(ds, cfg, spec, column: str):
    from operators import generate

    r, s = cfg.rewrite, cfg.score
    clap = dict(model=s.model, num_gpus=cfg.engine.num_gpus) if s.enabled else None
    return generate.apply(ds, cfg, spec, column, stage=Rewrite, accept=r.accept.model_dump(), max_tries=r.max_tries,
                          diverse=r.diverse, clap=clap)
