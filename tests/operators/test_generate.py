"""The engine's arguments: its scheduler sized as vLLM's offline `LLM` sizes it on the same device, and a
warning when the actor cannot keep that scheduler full. (Engines running rows: tests/jobs.)"""
import json

import pytest

from operators import config as config_mod
from operators.generate import engine_args, vllm_config


@pytest.fixture
def load(assets, tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav"}) + "\n")

    def load(path, *overrides):
        # The production file's engine section as it is, on the tiny checkpoint and this box's CPU.
        return config_mod.load(path, [f"model.path={assets['model']}", "model.family=qwen2-audio",
                                      "engine.num_gpus=0", *overrides],
                               input=str(tmp_path / "m.jsonl"), output=str(tmp_path / "out"))
    return load


@pytest.mark.parametrize("path", ["configs/caption.yaml", "configs/caption-demo.yaml"])
def test_the_engine_s_scheduler_is_the_one_vllm_s_llm_class_picks_on_this_device(load, path):
    import vllm
    from vllm.usage.usage_lib import UsageContext

    cfg = load(path)
    args = engine_args(cfg, config_mod.model_spec(cfg))
    ours = vllm_config(args).scheduler_config
    # What `vllm.LLM(**args)` builds its engine with (vllm/entrypoints/llm.py: usage_context=LLM_CLASS).
    llm = vllm.EngineArgs(**args).create_engine_config(UsageContext.LLM_CLASS).scheduler_config
    assert (ours.max_num_batched_tokens, ours.max_num_seqs) == (llm.max_num_batched_tokens, llm.max_num_seqs)
    if cfg.engine.max_num_seqs is None:  # the device's defaults: more than the async engine's own context gives
        plain = vllm.AsyncEngineArgs(**args).create_engine_config(UsageContext.ENGINE_CONTEXT).scheduler_config
        assert ours.max_num_seqs > plain.max_num_seqs and ours.max_num_batched_tokens > plain.max_num_batched_tokens
    else:  # a production file states the H100 values, and its actors keep them full
        assert (ours.max_num_seqs, ours.max_num_batched_tokens) == (1024, 16384)
        assert cfg.engine.batch_size * cfg.engine.max_inflight_batches >= cfg.engine.max_num_seqs


def test_an_actor_that_cannot_fill_its_engine_is_warned_of(load, capsys):
    load("configs/caption.yaml")
    assert "warning" not in capsys.readouterr().err
    load("configs/caption.yaml", "engine.batch_size=16", "engine.max_inflight_batches=4")
    err = capsys.readouterr().err
    assert ("warning: engine.batch_size=16 x engine.max_inflight_batches=4 x sampling.n=1 x 1 prompt a clip = 64 "
            "sequences in flight per engine, below engine.max_num_seqs=1024: the engine never runs full") in err
