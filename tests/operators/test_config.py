import pytest

from operators import config

DEMO = "configs/caption-demo.yaml"


def test_demo_config_loads(assets):
    cfg = config.load(DEMO)
    assert cfg.model.family == "qwen2-audio"
    assert cfg.engine.num_gpus == 0


def test_overrides_set_nested_keys_with_yaml_types(assets):
    cfg = config.load(DEMO, ["sampling.max_tokens=128", "engine.tensor_parallel_size=2", "engine.enforce_eager=false",
                             "sampling.stop=[a, b]"])
    assert cfg.sampling.max_tokens == 128
    assert cfg.engine.tensor_parallel_size == 2
    assert cfg.engine.enforce_eager is False
    assert cfg.sampling.stop == ["a", "b"]


def test_input_output_flags_override_config(assets, tmp_path):
    cfg = config.load(DEMO, input=assets["manifest"], output=str(tmp_path / "o"))
    assert cfg.output == str(tmp_path / "o")


@pytest.mark.parametrize("override, expect", [
    ("engine.bogus=1", "engine.bogus: unknown key; allowed here: engine.replicas"),
    ("sampling.max_tokens=many", "sampling.max_tokens: Input should be a valid integer"),
    ("sampling.temperature=-1", "sampling.temperature: Input should be greater than or equal to 0"),
    ("decode.long_audio=drop", "decode.long_audio: Input should be 'split' or 'error'"),
    ("model.family=gpt", "model.family: Value error, unknown family 'gpt'; known: audio-flamingo-3, gemma3n, llama3, midashenglm, mistral, moss-audio, qwen2-audio"),
    ("nonsense", "expected key=value"),
])
def test_bad_keys_name_the_key_and_what_is_allowed(assets, override, expect):
    with pytest.raises(config.ConfigError, match=None) as e:
        config.load(DEMO, [override])
    assert expect in str(e.value)


def test_gpus_must_match_tensor_parallel_size(assets):
    with pytest.raises(config.ConfigError, match="engine.num_gpus=1 but engine.tensor_parallel_size=2"):
        config.load(DEMO, ["engine.num_gpus=1", "engine.tensor_parallel_size=2"])
    assert config.load(DEMO, ["engine.num_gpus=2", "engine.tensor_parallel_size=2"]).engine.num_gpus == 2
    assert config.load(DEMO, ["engine.num_gpus=null", "engine.tensor_parallel_size=4"]).engine.num_gpus == 4


def test_missing_files_fail_fast(assets):
    with pytest.raises(config.ConfigError, match="input: no manifest matches"):
        config.load(DEMO, input="/nonexistent/*.jsonl")
    with pytest.raises(config.ConfigError, match="model.path: no checkpoint folder"):
        config.load(DEMO, ["model.path=./no/such/model"])
    with pytest.raises(config.ConfigError, match="--config: no such file"):
        config.load("configs/nope.yaml")


def test_hub_ids_are_accepted_without_a_local_folder(assets):
    assert config.load(DEMO, ["model.path=Qwen/Qwen2-Audio-7B-Instruct"]).model.path == "Qwen/Qwen2-Audio-7B-Instruct"


def test_engine_replicas_fixed_or_autoscaling(assets):
    from operators.stage import actors

    assert config.load(DEMO, ["engine.replicas=[1, 4]"]).engine.replicas == (1, 4)
    with pytest.raises(config.ConfigError, match="engine.replicas: Value error, give a count >= 1"):
        config.load(DEMO, ["engine.replicas=[3, 1]"])
    pool = actors((1, 4), 2)
    assert (pool.min_size, pool.max_size, pool.max_concurrent_calls_per_actor) == (1, 4, 2)


def test_decode_actors_fixed_autoscaling_or_grown_with_the_engines(assets):
    assert config.decode_pool(config.load(DEMO, ["decode.concurrency=[1, 6]"])) == (1, 6)
    with pytest.raises(config.ConfigError, match="decode.concurrency: Value error, give a count >= 1"):
        config.load(DEMO, ["decode.concurrency=[4, 2]"])
    # Per engine actor: the pool scales between ratio x the engine pool's bounds, rounded up.
    assert config.decode_pool(config.load(DEMO, ["decode.per_engine=1.5", "engine.replicas=[1, 4]"])) == (2, 6)
    assert config.decode_pool(config.load(DEMO, ["decode.per_engine=2", "engine.replicas=3"])) == 6
    with pytest.raises(config.ConfigError, match="decode.per_engine: Input should be greater than 0"):
        config.load(DEMO, ["decode.per_engine=0"])


def test_prompts_come_from_the_library_by_name_in_order(assets):
    cfg = config.load(DEMO, ["prompt.use=[sound_events, caption]", "prompt.custom.caption=Describe the music."])
    asks = config.prompts(cfg)
    assert list(asks) == ["sound_events", "caption"]
    assert asks["caption"].instruction == "Describe the music."  # overridden for this job
    assert asks["sound_events"].instruction.startswith("What sound events occur")


@pytest.mark.parametrize("overrides, expect", [
    (["prompt.use=[captoin]"], "prompt.use: unknown prompt 'captoin'; known: audio_only, caption, caption_short"),
    (["prompt.use=[caption, caption]"], "prompt.use: Value error, names must be unique"),
    (["prompt.library=nowhere.yaml"], "prompt.library: no such file 'nowhere.yaml'"),
    (["decode.overlap_s=26"], "decode.overlap_s: must be shorter than the 30 s window"),
    (["decode.window_s=40"], "decode.window_s: 40 s is longer than the model's 30 s window"),
    (["decode.window_s=10", "decode.cut_search_s=5", "decode.overlap_s=5"],
     "decode.overlap_s: must be shorter than the 10 s window minus decode.cut_search_s"),
])
def test_bad_prompt_and_window_settings_fail_fast(assets, overrides, expect):
    with pytest.raises(config.ConfigError) as e:
        config.load(DEMO, overrides)
    assert expect in str(e.value)


def test_a_caption_job_needs_a_prompt_and_aqa_a_chat_model(assets):
    from jobs import aqa, caption
    from jobs.runner import check

    with pytest.raises(config.ConfigError, match="model.family: 'qwen3' is a text model and cannot listen"):
        check(config.load(DEMO, ["model.family=qwen3", "model.path=.cache/models/tiny-qwen3"]), caption.JOB)
    with pytest.raises(config.ConfigError, match="prompt.use: name at least one prompt"):
        check(config.load(DEMO, ["prompt.use=[]"]), caption.JOB)
    whisper = config.load("configs/transcribe-demo.yaml")
    with pytest.raises(config.ConfigError, match="model.family: 'whisper-en' takes no conversation"):
        check(whisper, aqa.JOB)


def test_prompt_language_needs_a_prompt_that_names_one_and_a_language_whisper_knows(assets):
    with pytest.raises(config.ConfigError, match="prompt.language: the 'qwen2-audio' family's prompt names no language"):
        config.load(DEMO, ["prompt.language=fr"])
    with pytest.raises(config.ConfigError, match="prompt.language: 'french' is not a language Whisper knows"):
        config.load("configs/transcribe-demo.yaml", ["model.family=whisper", "prompt.language=french"])
    french = config.load("configs/transcribe-demo.yaml", ["model.family=whisper", "prompt.language=fr"])
    assert config.determining(french, ("prompt",))["prompt.language"] == "fr"  # a rerun in another is refused


@pytest.mark.parametrize("extra", [[], ["score.enabled=true", "score.model=.cache/models/tiny-clap"]])
def test_several_candidates_need_the_quality_stage_that_keeps_the_best(assets, extra):
    with pytest.raises(config.ConfigError, match="sampling.n > 1 needs quality.enabled=true"):
        config.load(DEMO, ["sampling.n=3", "sampling.temperature=0.8", "quality.enabled=false", *extra])


def test_what_determines_the_rows_leaves_operational_keys_out(assets):
    base = config.determining(config.load(DEMO), ("model", "prompt", "sampling", "decode", "quality", "score"))
    ops = config.load(DEMO, ["engine.replicas=2", "engine.batch_size=1", "decode.concurrency=3", "decode.batch_size=1",
                             "write.rows_per_file=5", "progress.every_s=1", "errors.max_engine_error_pct=50",
                             "read.max_chunk_rows=10", "run.stall_s=60", "engine.max_retries=0"])
    assert config.determining(ops, ("model", "prompt", "sampling", "decode", "quality", "score")) == base
    assert base["sampling.max_tokens"] == 24 and base["decode.cut"] == "energy" and "prompt.caption.instruction" in base


REWRITE = "configs/recipes/audiosetcaps-rewrite.yaml"
TEXT = ["model.family=qwen3", "model.path=.cache/models/tiny-qwen3", "score.model=.cache/models/tiny-clap",
        "input=.cache/labeled/manifest.jsonl", "output=out/never"]


@pytest.mark.parametrize("overrides, expect", [
    (["score.enabled=false"], "rewrite.accept: a CLAP test needs CLAP scores: set score.enabled=true"),
    (["rewrite.reference=null"], "rewrite.accept.above_reference: needs rewrite.reference"),
    (["rewrite.accept.above_reference=false", "score.enabled=false"], "rewrite.reference: is scored by CLAP"),
    (["sampling.temperature=0"], "rewrite.max_tries=3 with sampling.temperature=0 rewrites the same text each time"),
    (["rewrite.diverse=3"], "rewrite.diverse=3: each try samples sampling.n=1 texts; set sampling.n to at least 3"),
])
def test_a_rewrites_acceptance_needs_what_it_tests_with(assets, overrides, expect):
    with pytest.raises(config.ConfigError) as e:
        config.load(REWRITE, TEXT + overrides)
    assert expect in str(e.value)


def test_a_rewrite_job_needs_its_section(assets):
    from jobs import rewrite
    from jobs.runner import check

    assert check(config.load(REWRITE, TEXT), rewrite.JOB) == {}
    with pytest.raises(config.ConfigError, match="rewrite: required for this job; give rewrite.template"):
        check(config.load(DEMO), rewrite.JOB)
    values = config.determining(config.load(REWRITE, TEXT), rewrite.JOB.determines)
    assert values["rewrite.max_tries"] == 3 and values["rewrite.accept.above_reference"] is True
