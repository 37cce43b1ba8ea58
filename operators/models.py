"""The model registry: everything that differs between audio-language model families lives here.

Stages never branch on a model name; they read a `ModelSpec`. Adding a family is adding an entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """What a stage needs to know about one model family."""

    sample_rate: int
    # Longest audio one request may carry; longer clips are cut into windows of this size.
    window_s: float
    # How the prompt is made: "chat" renders the HF processor's chat template with one audio item per
    # clip; "fixed" sends `fixed_prompt` as it is (encoder-decoder models such as Whisper).
    prompt_format: str = "chat"
    fixed_prompt: str = ""
    # System prompt used when neither the row's conversation nor the job config sets one.
    default_system: str | None = None
    # Audio items one prompt may carry (a row with more becomes an error row).
    max_audios: int = 1
    # vLLM engine arguments this family needs; the job config's `engine` section overrides them.
    engine_args: dict[str, Any] = field(default_factory=dict)

    @property
    def engine_defaults(self) -> dict[str, Any]:
        return {"limit_mm_per_prompt": {"audio": self.max_audios}, **self.engine_args}


MODELS: dict[str, ModelSpec] = {
    # Qwen/Qwen2-Audio-7B-Instruct: Whisper-style encoder over 128-bin log-mel at 16 kHz, 30 s per audio.
    "qwen2-audio": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        default_system="You are a helpful assistant.",
        max_audios=4,
        engine_args={"max_model_len": 4096},
    ),
    # nvidia/audio-flamingo-3-hf: Whisper-style encoder + Qwen2.5-7B. Its processor cuts audio into 30 s
    # windows itself, up to 20 of them (600 s) per item, and truncates beyond: longer clips are cut here.
    # The chat template puts one <sound> per turn, however many audio items the turn has: one per prompt.
    "audio-flamingo-3": ModelSpec(
        sample_rate=16_000,
        window_s=600.0,
        default_system="You are a helpful assistant.",
        engine_args={"max_model_len": 8192},
    ),
    # Qwen/Qwen2.5-Omni-7B (and -3B): vLLM serves the thinker, text out. Same audio front end as
    # Qwen2-Audio (30 s per item). Its own default system prompt is the speech-output one; text-only
    # generation uses the plain assistant prompt.
    "qwen2.5-omni": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        default_system="You are a helpful assistant.",
        max_audios=4,
        engine_args={"max_model_len": 8192},
    ),
    # Whisper, English-only checkpoints (tiny.en ... medium.en): no language or task tokens. vLLM's default
    # decoder prompt adds <|en|><|transcribe|>, which these models answer with end-of-text at once.
    "whisper-en": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        prompt_format="fixed",
        fixed_prompt="<|startoftranscript|><|notimestamps|>",
        engine_args={"max_model_len": 448},
    ),
    # Whisper, multilingual checkpoints (large-v3, turbo), transcribing English.
    "whisper": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        prompt_format="fixed",
        fixed_prompt="<|startoftranscript|><|en|><|transcribe|><|notimestamps|>",
        engine_args={"max_model_len": 448},
    ),
}


def spec(family: str) -> ModelSpec:
    try:
        return MODELS[family]
    except KeyError:
        raise ValueError(f"model.family: unknown family {family!r}; known: {', '.join(sorted(MODELS))}") from None
