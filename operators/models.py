"""The model registry: everything that differs between model families lives here: the audio-language models
that listen, and the text LLMs that rewrite what they wrote (jobs.rewrite).

Stages never branch on a model name; they read a `ModelSpec`. Adding a family is adding an entry. The
family `auto` runs a checkpoint no entry knows: `resolve` reads its facts from the checkpoint itself.
Facts of the entries were read from vLLM 0.32's model files (placeholders, windows, modalities) and the
checkpoints' chat templates.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """What a stage needs to know about one model family."""

    # Of the audio it takes (an audio family's; a text family's are unused).
    sample_rate: int = 16_000
    # Longest audio one request may carry; longer clips are cut into windows of this size.
    window_s: float = 30.0
    # How the prompt is made: "chat" renders the HF processor's chat template with one audio item per
    # clip and the instruction; "audio_only" the same with no text at all (a captioner that takes only
    # audio); "fixed" sends `fixed_prompt` as it is (encoder-decoder models such as Whisper).
    prompt_format: str = "chat"
    fixed_prompt: str = ""
    # System prompt used when neither the row's conversation nor the job config sets one.
    default_system: str | None = None
    # Audio items one prompt may carry (a row with more becomes an error row).
    max_audios: int = 1
    # vLLM engine arguments this family needs; the job config's `engine` section overrides them.
    engine_args: dict[str, Any] = field(default_factory=dict)
    # Modalities the model also takes and a job never sends: vLLM would reserve memory for 999 images and
    # videos of an omni model unless their limit is 0.
    other_modalities: tuple[str, ...] = ()
    # Its config or processor is code shipped with the checkpoint: runs only with model.trust_remote_code.
    remote_code: bool = False
    # The chat template of a family whose prompt its own processor builds in code, with no template in the
    # checkpoint and no HF processor here: the prompt stage renders it with the checkpoint's tokenizer.
    chat_template: str | None = None
    # Whether the checkpoint has an audio encoder: false for the text LLMs of a rewrite.
    audio: bool = True
    # Whether its chat template takes a system turn; if not (Mistral's), the system text opens the user's turn.
    system_role: bool = True
    # Further arguments its chat template reads (Qwen3: enable_thinking=False, an answer without thinking).
    template_args: dict[str, Any] = field(default_factory=dict)

    @property
    def languages(self) -> bool:
        """Whether its prompt names the spoken language (multilingual Whisper)."""
        return "{language}" in self.fixed_prompt

    @property
    def engine_defaults(self) -> dict[str, Any]:
        if not self.audio:
            return dict(self.engine_args)
        if self.max_audios == 0:  # an audio family run as a text model: vLLM loads no encoder at all
            return {"language_model_only": True, **self.engine_args}
        limits = {"audio": self.max_audios, **{m: 0 for m in self.other_modalities}}
        return {"limit_mm_per_prompt": limits, **self.engine_args}

    def as_text(self) -> "ModelSpec":
        """This family as a text model (a rewrite's): chat prompts without audio items."""
        return replace(self, max_audios=0, prompt_format="chat")


# MOSS-Audio's prompt, as its processor writes it (`_build_default_prompt`: Qwen3 chat turns, each audio
# item's span and a newline before the text); vLLM expands each span to the clip's audio tokens.
MOSS_AUDIO_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

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
        other_modalities=("image", "video"),
    ),
    # Qwen/Qwen3-Omni-30B-A3B-Instruct and -Thinking (MoE; vLLM serves the thinker): 16 kHz Whisper-style
    # features cut in the feature extractor's 30 s chunks, `<|audio_start|><|audio_pad|><|audio_end|>` per clip.
    "qwen3-omni": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        default_system="You are a helpful assistant.",
        max_audios=4,
        engine_args={"max_model_len": 16384},
        other_modalities=("image", "video"),
    ),
    # Qwen/Qwen3-Omni-30B-A3B-Captioner: audio in, a detailed caption out; it takes no text and no system
    # prompt (prompt.use=[audio_only]).
    "qwen3-omni-captioner": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        prompt_format="audio_only",
        engine_args={"max_model_len": 16384},
        other_modalities=("image", "video"),
    ),
    # mispeech/midashenglm-7b: waveform in (no mel features), about 5 audio tokens a second; vLLM takes at
    # most 160000 samples (10 s) per clip. Its processor is code in the checkpoint.
    "midashenglm": ModelSpec(
        sample_rate=16_000,
        window_s=10.0,
        default_system="You are a helpful language and speech assistant.",
        engine_args={"max_model_len": 8192},
        remote_code=True,
    ),
    # google/gemma-3n-E2B-it, -E4B-it: audio at 16 kHz, cut at 30 s by the model (`<audio_soft_token>`).
    "gemma3n": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        engine_args={"max_model_len": 8192},
        other_modalities=("image",),
    ),
    # OpenMOSS-Team/MOSS-Audio-4B, -8B (Instruct, Thinking): 128-bin mel at 16 kHz, 12.5 audio tokens a second
    # (and, where processor_config.json turns them on, a time marker every 2 s); vLLM sizes its memory for 30 s
    # clips. A Qwen3 language model; its config is code in the checkpoint, its processor is vLLM's own.
    "moss-audio": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        default_system="You are a helpful assistant.",
        engine_args={"max_model_len": 8192},
        remote_code=True,
        chat_template=MOSS_AUDIO_CHAT_TEMPLATE,
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
    # Whisper, multilingual checkpoints (large-v3, turbo): the decoder prompt names the spoken language, a
    # row's `language` column or else `prompt.language` (default English); the row keeps which it was.
    "whisper": ModelSpec(
        sample_rate=16_000,
        window_s=30.0,
        prompt_format="fixed",
        fixed_prompt="<|startoftranscript|><|{language}|><|transcribe|><|notimestamps|>",
        engine_args={"max_model_len": 448},
    ),
    # Text LLMs for rewrites (jobs.rewrite): their chat templates ship with the checkpoints.
    # Qwen/Qwen3-8B and the rest of Qwen3: the template thinks aloud unless told not to.
    "qwen3": ModelSpec(
        audio=False,
        max_audios=0,
        template_args={"enable_thinking": False},
        engine_args={"max_model_len": 8192},
    ),
    # meta-llama/Llama-3.1-8B-Instruct, Llama-3.3-70B-Instruct: a system turn of their own.
    "llama3": ModelSpec(
        audio=False,
        max_audios=0,
        engine_args={"max_model_len": 8192},
    ),
    # mistralai/Mistral-7B-Instruct-v0.2 (AudioSetCaps' rewriter) and v0.3: the template refuses a system turn.
    "mistral": ModelSpec(
        audio=False,
        max_audios=0,
        system_role=False,
        engine_args={"max_model_len": 8192},
    ),
}


AUTO = "auto"


def spec(family: str) -> ModelSpec:
    try:
        return MODELS[family]
    except KeyError:
        raise ValueError(f"model.family: unknown family {family!r}; known: {', '.join(sorted(MODELS))}") from None


@lru_cache(maxsize=8)
def from_checkpoint(path: str, trust_remote_code: bool = False) -> ModelSpec:
    """The facts of a checkpoint no entry knows, read from its own files:

    - sample rate: its feature extractor's `sampling_rate`;
    - window: the processor's `max_audio_len` where the model windows long audio itself (Audio Flamingo 3),
      else the feature extractor's `chunk_length` (Whisper-style), else its `n_samples` / rate;
    - prompt: its chat template, one audio item per clip; one clip per prompt, the template's own system;
    - remote code: a config with `auto_map` (code in the checkpoint);
    - other modalities (limited to 0): the image or video processors it has;
    - a text LLM: a processor that is only a tokenizer (no feature extractor)."""
    import json
    import os

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    config = {}
    if os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    if not hasattr(processor, "feature_extractor") and not hasattr(processor, "sampling_rate"):
        return ModelSpec(audio=False, max_audios=0, remote_code="auto_map" in config)
    features = getattr(processor, "feature_extractor", processor)
    rate = int(getattr(features, "sampling_rate"))
    window = (getattr(processor, "max_audio_len", None) or getattr(features, "chunk_length", None)
              or getattr(features, "n_samples", 30 * rate) / rate)
    others = tuple(m for m in ("image", "video") if getattr(processor, f"{m}_processor", None) is not None)
    return ModelSpec(sample_rate=rate, window_s=float(window), other_modalities=others,
                     remote_code="auto_map" in config)


def resolve(family: str, path: str, trust_remote_code: bool = False) -> ModelSpec:
    """The spec of a configured model: its registry entry, or (family `auto`) what its checkpoint says."""
    return from_checkpoint(path, trust_remote_code) if family == AUTO else spec(family)
