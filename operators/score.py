"""CLAP audio-text similarity of each row's window and text (`clap_score`), in its own actor pool.

A transformers ClapModel (`laion/clap-htsat-unfused` in production; GPU actors on a cluster, CPU here)
embeds the row's audio and its text; the score is the cosine of the two normalized embeddings. CLAP's
feature extractor takes 10 s at 48 kHz and crops longer audio at random, so a window is embedded in
consecutive chunks of at most 10 s and their embeddings averaged: the same audio always scores the same.

In a generation job the window's audio is still in the row (`waveform`, at the model's rate); in
`jobs.quality` it is decoded again from the row's `audio` between `segment_start_s` and `segment_end_s`.
With several candidates (`sampling.n`) every candidate is scored (`candidate_scores`), so that the quality
stage can keep the best.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from operators.decode import window
from operators.stage import Stage, actors, audio_arrays, errors, put


def embeddings(out):
    """The projected embeddings of ClapModel.get_*_features: a tensor in transformers 4, the output's
    `pooler_output` in transformers 5 (pyproject allows both)."""
    return getattr(out, "pooler_output", out)


class Score(Stage):
    reads = ("error",)  # and the text column; `waveform`, or `audio` with the segment times
    writes = ("clap_score", "candidate_scores")  # the latter with several candidates
    drops = ("waveform",)  # the last stage that needs the audio
    records = ("candidate_scores",)

    def setup(self) -> None:
        import torch
        from transformers import ClapModel, ClapProcessor

        self.torch = torch
        self.column: str = self.cfg["column"]
        self.rate: int = self.cfg["sample_rate"]  # of `waveform`
        self.device = "cuda" if self.cfg["num_gpus"] else "cpu"
        self.model = ClapModel.from_pretrained(self.cfg["model"]).to(self.device).eval()
        self.processor = ClapProcessor.from_pretrained(self.cfg["model"])
        self.clap_rate: int = self.processor.feature_extractor.sampling_rate
        self.chunk = self.processor.feature_extractor.max_length_s * self.clap_rate

    def waves(self, batch: pa.Table) -> list[np.ndarray | None]:
        """Each row's window at `self.rate`; None for error rows."""
        errs = errors(batch)
        if "waveform" in batch.column_names:
            waves = [None if w is None else np.concatenate(w) for w in audio_arrays(batch.column("waveform"))]
            return [None if e is not None else w for w, e in zip(waves, errs)]
        return [None if e is not None else window(a, s, t, self.rate) for a, s, t, e in
                zip(*(batch.column(c).to_pylist() for c in ("audio", "segment_start_s", "segment_end_s")), errs)]

    def embed_audio(self, waves: list[np.ndarray]) -> np.ndarray:
        """One normalized embedding per wave (at `self.rate`): the mean over its 10 s chunks, normalized."""
        import soxr

        chunks, owner = [], []
        for k, w in enumerate(waves):
            w48 = soxr.resample(w, self.rate, self.clap_rate, quality="HQ") if self.rate != self.clap_rate else w
            for a in range(0, max(len(w48), 1), self.chunk):
                chunks.append(w48[a:a + self.chunk])
                owner.append(k)
        feats = self.processor.feature_extractor(chunks, sampling_rate=self.clap_rate, return_tensors="pt")
        with self.torch.no_grad():
            emb = embeddings(self.model.get_audio_features(input_features=feats["input_features"].to(self.device)))
        emb = emb.float().cpu().numpy()
        out = np.zeros((len(waves), emb.shape[1]), np.float32)
        np.add.at(out, np.asarray(owner), emb)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with self.torch.no_grad():
            emb = embeddings(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                          attention_mask=tok["attention_mask"].to(self.device)))
        return emb.float().cpu().numpy()

    def process(self, batch: pa.Table) -> pa.Table:
        waves = self.waves(batch)
        several = "candidates" in batch.column_names
        texts = (batch.column("candidates").to_pylist() if several else
                 [[t] for t in batch.column(self.column).to_pylist()])
        rows = [i for i, (w, t) in enumerate(zip(waves, texts)) if w is not None and t]
        scores: list[list[float] | None] = [None] * batch.num_rows
        if rows:
            audio = self.embed_audio([waves[i] for i in rows])
            flat = [t or "" for i in rows for t in texts[i]]
            text = self.embed_text(flat)
            k = 0
            for j, i in enumerate(rows):
                n = len(texts[i])
                scores[i] = [float(x) for x in text[k:k + n] @ audio[j]]
                k += n
        out = put(batch, clap_score=pa.array([s and s[0] for s in scores], pa.float64()))
        if several:
            out = put(out, candidate_scores=pa.array(scores, pa.list_(pa.float64())))
        return out


def apply(ds, cfg, column: str, sample_rate: int):
    s = cfg.score
    return ds.map_batches(
        Score,
        fn_constructor_kwargs=dict(column=column, sample_rate=sample_rate, model=s.model, num_gpus=s.num_gpus),
        batch_format="pyarrow",
        batch_size=s.batch_size,
        compute=actors(s.concurrency),
        num_gpus=s.num_gpus,
        num_cpus=s.num_cpus,
    )
