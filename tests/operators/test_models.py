"""The registry: today's families, remote code only when asked, audio-only prompts, the `auto` family, and
prompts that use the row."""
import json

import pyarrow as pa
import pytest

from operators import config as config_mod
from operators.models import MODELS, resolve
from operators.prompt import Prompt, fan_out, fill


@pytest.fixture
def load(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav"}) + "\n")
    (tmp_path / "model").mkdir()

    def load(*overrides):
        return config_mod.load("configs/caption-demo.yaml", [f"model.path={tmp_path / 'model'}", *overrides],
                               input=str(tmp_path / "m.jsonl"), output=str(tmp_path / "out"))
    return load


def test_omni_families_ask_vllm_for_no_images_or_videos():
    for family in ("qwen2.5-omni", "qwen3-omni", "qwen3-omni-captioner"):
        assert MODELS[family].engine_defaults["limit_mm_per_prompt"] == {
            "audio": MODELS[family].max_audios, "image": 0, "video": 0}
    assert MODELS["gemma3n"].engine_defaults["limit_mm_per_prompt"] == {"audio": 1, "image": 0}
    assert MODELS["midashenglm"].window_s == 10.0 and MODELS["qwen3-omni-captioner"].prompt_format == "audio_only"


def test_text_families_and_audio_families_as_text_models():
    for family in ("qwen3", "llama3", "mistral"):
        assert not MODELS[family].audio and "limit_mm_per_prompt" not in MODELS[family].engine_defaults
    # An omni or audio checkpoint rewriting: vLLM loads its language model only, no encoder.
    for family in ("qwen2.5-omni", "qwen3-omni", "qwen2-audio"):
        defaults = MODELS[family].as_text().engine_defaults
        assert defaults["language_model_only"] is True and "limit_mm_per_prompt" not in defaults
    assert MODELS["qwen3"].template_args == {"enable_thinking": False} and not MODELS["mistral"].system_role


def test_auto_knows_a_text_checkpoint_by_its_processor(assets):
    spec = resolve("auto", ".cache/models/tiny-qwen3")
    assert not spec.audio and spec.max_audios == 0


@pytest.mark.parametrize("family", ["midashenglm", "moss-audio"])
def test_remote_code_runs_only_when_the_config_says_so(load, family):
    with pytest.raises(config_mod.ConfigError, match=r"^model.trust_remote_code: .* set model.trust_remote_code=true"):
        load(f"model.family={family}")
    cfg = load(f"model.family={family}", "model.trust_remote_code=true")
    from operators.generate import engine_args

    assert engine_args(cfg, MODELS[family])["trust_remote_code"] is True
    assert "trust_remote_code" not in engine_args(load(), MODELS["qwen2-audio"])  # never on by default


def test_an_empty_instruction_is_only_for_a_model_that_takes_audio_alone(load):
    cfg = load("model.family=qwen3-omni-captioner", "prompt.use=[audio_only]")
    assert config_mod.prompts(cfg)["audio_only"].instruction == ""
    with pytest.raises(config_mod.ConfigError, match="takes audio alone, no instruction; use prompt.use=\\[audio_only\\]"):
        load("model.family=qwen3-omni-captioner")
    with pytest.raises(config_mod.ConfigError, match="an empty instruction is only for families that take audio alone"):
        load("prompt.use=[audio_only]")


def test_braces_that_name_no_column_are_refused(load):
    with pytest.raises(config_mod.ConfigError, match="braces in .* name no column"):
        load("prompt.custom.tagged='Tags: {labels.first}'", "prompt.use=[tagged]")
    assert load("prompt.custom.tagged='Tags: {labels} {{raw}}'", "prompt.use=[tagged]")


def test_auto_reads_the_facts_of_the_checkpoint(assets):
    for family, path in (("qwen2-audio", assets["model"]), ("audio-flamingo-3", assets["af3"])):
        auto = resolve("auto", path)
        assert (auto.sample_rate, auto.window_s, auto.prompt_format) == (
            MODELS[family].sample_rate, MODELS[family].window_s, "chat")
        assert not auto.remote_code and auto.other_modalities == ()


def stage(spec, path, prompts):
    """The prompt stage's rows as the engine stage asks them (fanned out over prompts)."""
    asks = Prompt(spec=spec, trust_remote_code=False, model_path=path, system=None, prompts=prompts,
                  conversations=False, language=None)
    return lambda batch: fan_out(asks(batch))


def rows(**columns):
    n = len(next(iter(columns.values())))
    return pa.table({"audio_uris": [["a.wav"]] * n, "chat": pa.array([None] * n, pa.string()),
                     "error": pa.array([None] * n, pa.string()), **columns})


def test_auto_renders_the_prompts_its_entry_renders(assets):
    prompts = {"caption": {"instruction": "Describe the audio.", "system": None}}
    for family, path in (("qwen2-audio", assets["model"]), ("audio-flamingo-3", assets["af3"])):
        a = stage(MODELS[family], path, prompts)(rows(id=["x"]))
        b = stage(resolve("auto", path), path, prompts)(rows(id=["x"]))
        assert a["prompt_text"].to_pylist() == b["prompt_text"].to_pylist()


def test_prompts_filled_from_the_row_reach_the_engine_as_text(assets):
    prompts = {"tagged": {"instruction": "Describe the sound. Tags: {labels}. Title: {title}. {{not a field}}",
                          "system": None},
               "plain": {"instruction": "Describe the audio.", "system": None}}
    out = stage(MODELS["qwen2-audio"], assets["model"], prompts)(
        rows(labels=["dog, bark", "{title}", None], title=["Walk", "x {y} z", "Rain"]))
    got = out.to_pylist()
    assert got[0]["prompt"] == "Describe the sound. Tags: dog, bark. Title: Walk. {not a field}"
    assert "Tags: dog, bark. Title: Walk. {not a field}" in got[0]["prompt_text"]  # what the engine is sent
    assert got[2]["prompt"] == "Describe the sound. Tags: {title}. Title: x {y} z. {not a field}"  # values as text
    missing = [r for r in got if r["error"]]
    assert len(missing) == 1 and missing[0]["prompt_id"] == "tagged"
    assert missing[0]["error"] == ("prompt/missing_field: a.wav: the row has no value for 'labels', which prompt "
                                   "'tagged' names")
    assert got[5]["prompt_id"] == "plain" and got[5]["error"] is None  # the row's other prompt is asked
    assert fill("{a}", {"a": ["x", "y"]}) == '["x", "y"]'  # nested values as their JSON text


def test_a_captioner_prompt_is_the_audio_alone(assets):
    out = stage(MODELS["qwen3-omni-captioner"], assets["model"], {"audio_only": {"instruction": "", "system": None}})(
        rows(id=["x"]))
    text = out["prompt_text"][0].as_py()
    assert "<|AUDIO|>" in text and "Describe" not in text and out["prompt"][0].as_py() == ""
