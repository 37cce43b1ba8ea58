import json
import os

import numpy as np
import pyarrow as pa
import pytest

from operators import conversation as conv
from operators.models import spec
from operators.prompt import CONVERSATION, Prompt, fan_out, render

QWEN2_AUDIO, AF3, OMNI = spec("qwen2-audio"), spec("audio-flamingo-3"), spec("qwen2.5-omni")

# Qwen2.5-Omni's chat template, as shipped with Qwen/Qwen2.5-Omni-7B (the tiny checkpoint cannot be built
# here: its processor needs torchvision's video transforms; see the model registry).
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)



@pytest.fixture(scope="module")
def processor(assets):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(assets["model"])


@pytest.fixture(scope="module")
def af3(assets):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(assets["af3"])


def caption(system=None, text="Describe the audio in detail.", n_audio=1):
    return conv.with_system(conv.instruction(n_audio, text), system)


def test_qwen2_audio_prompt_equals_the_hf_chat_template_rendering(processor):
    # The conversation as the Qwen2-Audio model card writes it.
    card = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                     {"type": "text", "text": "Describe the audio in detail."}]},
    ]
    hf = processor.apply_chat_template(card, add_generation_prompt=True, tokenize=False)
    ours = render(processor, QWEN2_AUDIO, caption())
    assert ours == hf
    assert ours == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nDescribe the audio in detail.<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_configured_system_prompt_is_used(processor):
    assert render(processor, QWEN2_AUDIO, caption("Be terse.")).startswith("<|im_start|>system\nBe terse.<|im_end|>")


def test_dataflow_conversation_renders_as_the_equivalent_hf_messages(processor):
    """Two audios placed by markers, an earlier answer kept: the same text as the hand-written messages."""
    turns = [{"from": "human", "value": "First <audio> then <audio> Which is louder?"},
             {"from": "gpt", "value": "The first."}, {"from": "human", "value": "Why?"}]
    hand = [{"role": "user", "content": [{"type": "text", "text": "First"}, {"type": "audio", "audio_url": "a.wav"},
                                         {"type": "text", "text": "then"}, {"type": "audio", "audio_url": "b.wav"},
                                         {"type": "text", "text": "Which is louder?"}]},
            {"role": "assistant", "content": "The first."}, {"role": "user", "content": [{"type": "text", "text": "Why?"}]}]
    ours = render(processor, QWEN2_AUDIO, conv.from_dataflow(turns, ["a.wav", "b.wav"]))
    assert ours == processor.apply_chat_template(hand, add_generation_prompt=True, tokenize=False)
    assert ours.count("<|AUDIO|>") == 2 and "The first.<|im_end|>" in ours


def qwen_audio_tokens(n_samples: int) -> int:
    """Qwen2-Audio and AF3: 100 mel frames/s, conv stride 2, then avg-pool 2: 25 tokens per second."""
    frames = -(-n_samples // 160)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def placeholders(proc, prompt: str, waves: list, token: str) -> int:
    out = proc(text=prompt, audio=waves, sampling_rate=16000, return_tensors="pt")
    return int((out["input_ids"][0] == proc.tokenizer.convert_tokens_to_ids(token)).sum())


@pytest.mark.parametrize("seconds", [1.0, 3.0, 12.5, 30.0])
def test_qwen2_audio_one_placeholder_per_audio_token(processor, seconds):
    wave = np.zeros(int(16000 * seconds), np.float32)
    n = placeholders(processor, render(processor, QWEN2_AUDIO, caption()), [wave], "<|AUDIO|>")
    assert n == qwen_audio_tokens(len(wave))
    assert n == pytest.approx(25 * seconds, abs=1)


def test_qwen2_audio_two_clips_get_their_own_placeholders(processor):
    waves = [np.zeros(16000, np.float32), np.zeros(48000, np.float32)]
    n = placeholders(processor, render(processor, QWEN2_AUDIO, caption(n_audio=2)), waves, "<|AUDIO|>")
    assert n == qwen_audio_tokens(16000) + qwen_audio_tokens(48000)


def test_af3_prompt_equals_the_hf_chat_template_rendering(af3):
    # The conversation as the transformers AF3 docs write it (text before audio: AF3 puts <sound> first).
    docs = [{"role": "user", "content": [{"type": "text", "text": "Transcribe the input speech."},
                                         {"type": "audio", "path": "clip.wav"}]}]
    hf = af3.apply_chat_template(docs, add_generation_prompt=True, tokenize=False)
    ours = render(af3, AF3, caption(text="Transcribe the input speech."))
    assert ours == hf == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                          "<sound>Transcribe the input speech.<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("seconds", [1.0, 12.5, 30.0, 45.0, 600.0])
def test_af3_placeholders_cover_every_30s_window_up_to_600s(af3, seconds):
    """AF3's processor cuts audio into 30 s windows (20 at most): the tokens of all windows, nothing lost
    up to the registry's 600 s window."""
    assert AF3.window_s == 600.0
    n_samples = int(16000 * seconds)
    wave = np.zeros(n_samples, np.float32)
    n = placeholders(af3, render(af3, AF3, caption()), [wave], "<sound>")
    full, rest = divmod(n_samples, 480000)
    assert n == full * qwen_audio_tokens(480000) + (qwen_audio_tokens(rest) if rest else 0)


def test_qwen2_5_omni_prompt_equals_the_chat_template_rendering(assets):
    """Rendered with the template Qwen2.5-Omni ships (through the tokenizer: the Omni processor cannot be
    built without torchvision here)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["model"])
    tok.chat_template = OMNI_CHAT_TEMPLATE
    card = [{"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
            {"role": "user", "content": [{"type": "audio", "audio": "clip.wav"},
                                         {"type": "text", "text": "Describe the audio in detail."}]}]
    hf = tok.apply_chat_template(card[1:], add_generation_prompt=True, tokenize=False)
    assert render(tok, OMNI, caption()) == hf == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|audio_bos|><|AUDIO|><|audio_eos|>Describe the audio in detail.<|im_end|>\n<|im_start|>assistant\n")


MOSS = spec("moss-audio")


def moss_processor(path: str):
    """vLLM's own MOSS-Audio processor (the model has no HF one here), set up from the checkpoint's
    processor_config.json as vLLM's engine sets it up."""
    from transformers import AutoTokenizer
    from vllm.model_executor.models.moss_audio import MossAudioProcessor

    with open(f"{path}/processor_config.json") as f:
        return MossAudioProcessor(AutoTokenizer.from_pretrained(path, trust_remote_code=True), **json.load(f))


def moss_audio_tokens(n_samples: int) -> int:
    """MOSS-Audio: 100 mel frames/s, three stride-2 convolutions: 12.5 tokens per second."""
    n = n_samples // 160  # the Whisper STFT frames, less the last one, as its feature extractor drops it
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


def test_moss_audio_prompt_is_the_one_its_processor_writes(assets):
    """The registry's template renders the prompt MOSS-Audio's processor builds by hand (Qwen3 turns, the
    audio span, a newline, the instruction), through the checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["moss"], trust_remote_code=True)
    assert render(tok, MOSS, caption(text="Describe this audio.")) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|audio_bos|><|AUDIO|><|audio_eos|>\nDescribe this audio.<|im_end|>\n<|im_start|>assistant\n")
    stage = Prompt(spec=MOSS, trust_remote_code=True, model_path=assets["moss"], system=None,
                   prompts={"caption": {"instruction": "Describe this audio.", "system": None}}, conversations=False, language=None)
    assert fan_out(stage(rows([None]))).column("prompt_text")[0].as_py() == render(tok, MOSS, caption(text="Describe this audio."))


@pytest.mark.parametrize("seconds", [0.5, 2.0, 7.3, 30.0])
def test_moss_audio_placeholders_and_time_markers_per_clip_length(assets, seconds):
    """vLLM's MOSS-Audio processor expands the span to 12.5 audio tokens a second and, as the checkpoint's
    processor_config.json asks, writes the elapsed seconds (2, 4, ...) as digit tokens every 2 s."""
    proc = moss_processor(assets["moss"])
    wave = np.zeros(int(16000 * seconds), np.float32)
    ids = proc(text=render(proc.tokenizer, MOSS, caption()), audio=[wave])["input_ids"][0].tolist()
    span = ids[ids.index(proc.audio_start_id) + 1:ids.index(proc.audio_end_id)]
    assert span.count(proc.audio_token_id) == moss_audio_tokens(len(wave))
    markers = proc.tokenizer.decode([i for i in span if i != proc.audio_token_id])
    assert markers == "".join(str(s) for s in range(2, int(moss_audio_tokens(len(wave)) / 12.5) + 1, 2))


def test_whisper_prompt_is_fixed():
    assert render(None, spec("whisper-en"), caption()) == "<|startoftranscript|><|notimestamps|>"


def test_multilingual_whisper_is_told_the_rows_language_or_the_jobs(assets):
    """A row's `language` wins over prompt.language; the row keeps the language its prompt named, and the
    prompt tokenizes to Whisper's own token for it. A language Whisper has no token for is the row's error."""
    from transformers import AutoTokenizer

    path = os.path.join(os.path.dirname(assets["model"]), "whisper-tiny-en")  # its tokenizer has every language token
    stage = Prompt(spec=spec("whisper"), trust_remote_code=False, model_path=path, system=None,
                   prompts={"transcribe": {"instruction": "Transcribe.", "system": None}}, conversations=False,
                   language="de")
    out = fan_out(stage(rows([None] * 3).append_column("language", pa.array(["fr", None, "xx"], pa.string()))))
    assert out.column("language").to_pylist() == ["fr", "de", "xx"]
    texts, errs = out.column("prompt_text").to_pylist(), out.column("error").to_pylist()
    assert texts[:2] == ["<|startoftranscript|><|fr|><|transcribe|><|notimestamps|>",
                         "<|startoftranscript|><|de|><|transcribe|><|notimestamps|>"]
    assert errs[:2] == [None, None] and texts[2] is None
    assert errs[2] == ("prompt/unknown_language: a.wav: the row's language 'xx' is not one Whisper knows; give an "
                       "ISO 639-1 code (en, fr, zh, ...)")
    tok = AutoTokenizer.from_pretrained(path)
    assert tok(texts[0], add_special_tokens=False)["input_ids"] == tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|fr|>", "<|transcribe|>", "<|notimestamps|>"])
    english = fan_out(Prompt(spec=spec("whisper"), trust_remote_code=False, model_path=path, system=None,
                             prompts={"transcribe": {"instruction": "Transcribe.", "system": None}}, conversations=False,
                             language=None)(rows([None])))
    assert english.column("language").to_pylist() == ["en"]  # unset: English, as before


def rows(chats, uris=None, err=None):
    n = len(chats)
    return pa.table({"id": [f"r{i}" for i in range(n)],
                     "audio_uris": uris or [["a.wav"]] * n, "chat": chats, "error": [err] * n})


PROMPTS = {"caption": {"instruction": "Describe it.", "system": None},
           "events": {"instruction": "What sound events occur?", "system": "Be brief."},
           "lang": {"instruction": "Is there speech? What language?", "system": None}}


def test_fan_out_gives_every_clip_every_prompt(assets):
    stage = Prompt(spec=QWEN2_AUDIO, trust_remote_code=False, model_path=assets["model"], system=None, prompts=PROMPTS, conversations=False, language=None)
    asked = stage(rows([None, None]))
    assert asked.num_rows == 2  # one row a clip leaves the stage: its audio once, fanned out by the engine stage
    out = fan_out(asked)
    assert out.column("id").to_pylist() == ["r0"] * 3 + ["r1"] * 3
    assert out.column("prompt_id").to_pylist() == ["caption", "events", "lang"] * 2
    assert set(out.column("prompts").to_pylist()) == {3}
    texts = out.column("prompt_text").to_pylist()
    assert texts[1].startswith("<|im_start|>system\nBe brief.") and texts[0].endswith(
        "Describe it.<|im_end|>\n<|im_start|>assistant\n")


def test_error_rows_fan_out_too(assets):
    """A clip that failed to decode still comes out once per prompt, with its error."""
    stage = Prompt(spec=QWEN2_AUDIO, trust_remote_code=False, model_path=assets["model"], system=None, prompts=PROMPTS, conversations=False, language=None)
    out = fan_out(stage(rows([None], err="decode/missing: a.wav: no such file")))
    assert out.column("prompt_id").to_pylist() == list(PROMPTS)
    assert out.column("error").to_pylist() == ["decode/missing: a.wav: no such file"] * 3
    assert out.column("prompt_text").to_pylist() == [None] * 3


def test_conversations_are_answered_as_they_are(assets):
    chat = json.dumps(conv.from_dataflow([{"from": "human", "value": "<audio>What is it?"}], ["a.wav"]))
    stage = Prompt(spec=QWEN2_AUDIO, trust_remote_code=False, model_path=assets["model"], system="Be brief.", prompts={}, conversations=True, language=None)
    out = fan_out(stage(rows([chat, None])))
    assert out.column("prompt_id").to_pylist() == [CONVERSATION] * 2
    assert out.column("prompt").to_pylist()[0] == "What is it?"
    assert out.column("prompt_text")[0].as_py().startswith("<|im_start|>system\nBe brief.")
    assert out.column("error").to_pylist()[1].startswith("prompt/no_conversation: a.wav")


def test_too_many_audio_items_is_the_rows_error(assets):
    stage = Prompt(spec=AF3, trust_remote_code=False, model_path=assets["af3"], system=None, prompts=PROMPTS, conversations=False, language=None)
    out = fan_out(stage(rows([None], uris=[["a.wav", "b.wav"]])))
    assert out.column("error")[0].as_py().startswith("prompt/too_many_audio: a.wav, b.wav: the model takes at most 1")
