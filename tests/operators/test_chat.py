"""The rewrite's prompt: the family's chat facts (system turn or not, template arguments) over its tokenizer."""
import pyarrow as pa

from operators.chat import Chat, messages
from operators.models import MODELS


def test_a_family_without_a_system_turn_gets_the_system_text_in_the_users():
    assert messages(MODELS["mistral"], "Be brief.", "Rewrite: x") == [
        {"role": "user", "content": "Be brief.\n\nRewrite: x"}]
    assert messages(MODELS["llama3"], "Be brief.", "x") == [{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": "x"}]
    assert messages(MODELS["qwen3"], None, "x") == [{"role": "user", "content": "x"}]  # no default system
    assert messages(MODELS["qwen2-audio"].as_text(), None, "x")[0] == {"role": "system",
                                                                       "content": "You are a helpful assistant."}


def test_the_prompt_is_the_checkpoints_template_with_the_familys_arguments(assets):
    from transformers import AutoTokenizer

    stage = Chat(spec=MODELS["qwen3"], system="Be brief.", model_path=".cache/models/tiny-qwen3", trust_remote_code=False)
    out = stage(pa.table({"prompt": ["Rewrite: a dog barks", "never"], "error": [None, "rewrite/no_answers: x"]}))
    tok = AutoTokenizer.from_pretrained(".cache/models/tiny-qwen3")
    expected = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Rewrite: a dog barks"}],
                                       add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert out["prompt_text"].to_pylist() == [expected, None]
    assert expected.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # no thinking: the answer at once
    assert out["prompt"].to_pylist() == [expected, "never"]  # the output keeps what the model was given
