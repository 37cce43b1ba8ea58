import numpy as np
import pytest

from operators.models import spec
from operators.prompt import Prompt, render

QWEN2_AUDIO = spec("qwen2-audio")


@pytest.fixture(scope="module")
def processor(assets):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(assets["model"])


def test_prompt_equals_the_hf_chat_template_rendering(processor):
    # The conversation as the Qwen2-Audio model card writes it.
    conversation = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                     {"type": "text", "text": "Describe the audio in detail."}]},
    ]
    hf = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    ours = render(processor, QWEN2_AUDIO, None, "Describe the audio in detail.")
    assert ours == hf
    assert ours == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nDescribe the audio in detail.<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_configured_system_prompt_is_used(processor):
    assert render(processor, QWEN2_AUDIO, "Be terse.", "Hi").startswith("<|im_start|>system\nBe terse.<|im_end|>")


def expected_audio_tokens(n_samples: int) -> int:
    """Qwen2-Audio: 100 mel frames/s, conv stride 2, then avg-pool 2: 25 tokens per second of audio."""
    frames = -(-n_samples // 160)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


@pytest.mark.parametrize("seconds", [1.0, 3.0, 12.5, 30.0])
def test_processing_yields_one_placeholder_per_audio_token(processor, seconds):
    prompt = render(processor, QWEN2_AUDIO, None, "Describe the audio in detail.")
    wave = np.zeros(int(16000 * seconds), np.float32)
    out = processor(text=prompt, audio=[wave], sampling_rate=16000, return_tensors="np")
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    n = int((out["input_ids"][0] == audio_id).sum())
    assert n == expected_audio_tokens(len(wave))
    assert n == pytest.approx(25 * seconds, abs=1)


def test_prompt_stage_writes_instruction_and_rendered_text(assets):
    import pyarrow as pa

    stage = Prompt(spec=QWEN2_AUDIO, model_path=assets["model"], system=None, instruction="What is it?")
    out = stage(pa.table({"id": ["a", "b"]}))
    assert out.column("prompt").to_pylist() == ["What is it?"] * 2
    assert out.column("prompt_text")[0].as_py().endswith("What is it?<|im_end|>\n<|im_start|>assistant\n")
