"""The question-answering job end to end on the real engine: DataFlow-MM's guide lines and variants,
OpenAI/HF chat rows, multi-audio and multi-turn conversations; Qwen2-Audio and Audio Flamingo 3."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import conversation
from operators.decode import load
from operators.read import read_chunk

CMD = [sys.executable, "-m", "jobs.aqa", "--config", "configs/aqa-demo.yaml"]
BAD = [
    {"id": "bad-markers", "audio": ["../example_data/audio_aqa_pipeline/test_1.wav"],
     "conversation": [{"from": "human", "value": "<audio> and <audio>?"}]},
    {"id": "bad-last-turn", "messages": [
        {"role": "user", "content": [{"type": "audio", "audio": "../example_data/audio_aqa_pipeline/test_1.wav"}]},
        {"role": "assistant", "content": "An answer already."}]},
    {"id": "bad-missing", "audio": ["../example_data/audio_aqa_pipeline/nope.wav"],
     "conversation": [{"from": "human", "value": "What is this?"}]},
]


def outputs(out: str) -> list[dict]:
    files = sorted(glob.glob(f"{out}/part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default").to_pylist()


def job(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(CMD + args, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data(assets, tmp_path_factory):
    """The demo's AQA rows, copied with their audio, plus rows that cannot be answered."""
    root = tmp_path_factory.mktemp("aqa") / "aqa"
    shutil.copytree(assets["aqa"], root)
    with open(root / "data" / "bad.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in BAD)
    return root


@pytest.fixture(scope="module")
def qwen(data):
    out = str(data.parent / "out-qwen")
    job(["--input", f"{data}/data/*.jsonl", "--output", out, "sampling.max_tokens=8"])
    return outputs(out)


def expected_prompt_tokens(processor, spec_name: str, manifest: str, row: int, system: str, template=None) -> int:
    """What the model's own processor makes of the row: its conversation (rendered by `template`, else the
    processor) and its audio."""
    from operators.models import spec
    from operators.prompt import render

    rec = read_chunk(manifest, 0, row + 1).to_pylist()[row]
    messages = conversation.with_system(json.loads(rec["chat"]), system)
    text = render(template or processor, spec(spec_name), messages)
    waves = [load(u, 16000, b)[0] for u, b in zip(rec["audio_uris"], rec["audio_bytes"])]
    return len(processor(text=text, audio=waves, sampling_rate=16000, return_tensors="pt")["input_ids"][0])


def test_every_row_of_both_formats_is_answered_once(qwen, data):
    manifests = sorted(glob.glob(f"{data}/data/*.jsonl"))
    expected = {(m, i) for m in manifests for i, _ in enumerate(open(m))}
    got = [(r["source_manifest"], r["source_row"]) for r in qwen]
    assert sorted(got) == sorted(expected)  # each once
    good = [r for r in qwen if not r["id"].startswith("bad-")]
    assert all(r["error"] is None and r["answer"] for r in good), [r["error"] for r in good]
    assert {r["prompt_id"] for r in qwen} == {"conversation"}
    guide = [r for r in qwen if r["source_manifest"].endswith("sample_data.jsonl")]
    assert [r["prompt"] for r in sorted(guide, key=lambda r: r["source_row"])] == [
        "Transcribe the audio into Chinese.", "Describe the sound in this audio clip."]


def test_unanswerable_rows_say_why(qwen, data):
    errors = {r["id"]: r["error"] for r in qwen if r["id"].startswith("bad-")}
    bad = f"{data}/data/bad.jsonl"
    assert errors == {
        "bad-markers": f"read/bad_conversation: {bad}:1: 2 <audio> markers but 1 audio files",
        "bad-last-turn": f"read/bad_conversation: {bad}:2: the last turn is the assistant's; nothing to answer",
        "bad-missing": f"decode/missing: {data}/example_data/audio_aqa_pipeline/nope.wav: no such file",
    }


def test_output_keeps_the_input_format(qwen, data):
    by_id = {r["id"]: r for r in qwen}
    two = by_id["two-audios"]
    assert two["audio"] == [f"{data}/example_data/audio_aqa_pipeline/test_2.wav",
                            f"{data}/example_data/audio_aqa_pipeline/test_3.flac"]
    assert json.loads(two["conversation"])[0]["value"].startswith("First: <audio>")  # as it came, as JSON text
    assert json.loads(by_id["oa-multi-turn"]["messages"])[1]["role"] == "assistant"
    assert two["duration_s"] == pytest.approx(7.0)


def test_the_engine_sees_what_the_hf_processor_makes_of_each_row(qwen, assets):
    """Prompt tokens counted by vLLM = the HF processor's tokens for the same conversation and audio:
    system prompt, audio placement, several audios, earlier turns and inline audio all arrive intact."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(assets["model"])
    checked = 0
    for r in qwen:
        if r["error"] is None:
            want = expected_prompt_tokens(processor, "qwen2-audio", r["source_manifest"], r["source_row"],
                                          "You are a helpful assistant.")
            assert r["prompt_tokens"] == want, r["id"]
            checked += 1
    assert checked == 10


def test_audio_flamingo_3_on_the_real_engine_hears_all_of_a_40s_clip(data, assets):
    """AF3 through vLLM: the guide's lines and a 40 s clip, which AF3 takes whole (30 s windows inside
    the model, up to 600 s): its prompt carries both windows' audio tokens, nothing truncated."""
    from transformers import AutoProcessor

    long = data / "data" / "long.jsonl"
    long.write_text(json.dumps({"id": "long", "audio": [os.path.join(assets["speech"], "long-40s.wav")],
                                "conversation": [{"from": "human", "value": "Transcribe the audio."}]}) + "\n")
    out = str(data.parent / "out-af3")
    job(["--input", f"{data}/data/[ls]*.jsonl", "--output", out, "model.family=audio-flamingo-3",
         f"model.path={assets['af3']}", "sampling.max_tokens=8"])
    rows = outputs(out)
    assert len(rows) == 3 and all(r["error"] is None and r["answer"] for r in rows)
    processor = AutoProcessor.from_pretrained(assets["af3"])
    for r in rows:
        assert r["prompt_tokens"] == expected_prompt_tokens(processor, "audio-flamingo-3", r["source_manifest"],
                                                            r["source_row"], "You are a helpful assistant."), r["id"]
    (clip,) = [r for r in rows if r["id"] == "long"]
    assert clip["segments"] == 1 and clip["duration_s"] > 39
    assert clip["segment_end_s"] == pytest.approx(clip["duration_s"])
    assert clip["prompt_tokens"] > 39 * 25  # 25 audio tokens per second, all of it


def test_moss_audio_answers_both_formats_and_captions_every_window_on_the_real_engine(data, assets, caption_run):
    """MOSS-Audio through the AQA job (remote-code config opted in, the registry's prompt template, vLLM's
    processor): the engine's prompt tokens equal vLLM's MOSS-Audio processor's for each row's conversation
    and audio, time markers included; a row with two clips is refused as the model takes one. The same run
    (one engine start) asks the caption demo's rows, which have no conversation, `prompt.use`'s caption
    prompt: the same rows, windows and errors as the default model's caption run, and prompt tokens equal
    the processor's for that prompt and that much audio."""
    import numpy as np

    from operators.models import spec
    from operators.prompt import render
    from tests.operators.test_prompt import caption, moss_processor

    out = str(data.parent / "out-moss")
    manifests = sorted(glob.glob(f"{data}/data/[dms]*.jsonl"))
    # The caption run's windows: its overlap (tests/conftest.py's CAPTION_CMD); the AQA rows are shorter than one.
    job(["--output", out, f"input={json.dumps([*manifests, assets['manifest']])}", "model.family=moss-audio",
         f"model.path={assets['moss']}", "model.trust_remote_code=true", "sampling.max_tokens=8",
         "prompt.use=[caption]", "decode.overlap_s=2"])
    everything = outputs(out)
    rows = [r for r in everything if r["source_manifest"] != assets["manifest"]]
    assert sorted((r["source_manifest"], r["source_row"]) for r in rows) == sorted(
        (m, i) for m in manifests for i, _ in enumerate(open(m)))
    (two,) = [r for r in rows if r["id"] == "two-audios"]
    assert two["error"].startswith("prompt/too_many_audio: ") and "at most 1 audio item(s)" in two["error"]
    processor = moss_processor(assets["moss"])
    good = [r for r in rows if r["id"] != "two-audios"]
    assert len(good) == 9 and all(r["error"] is None and r["answer"] for r in good), [r["error"] for r in good]
    for r in good:
        assert r["prompt_tokens"] == expected_prompt_tokens(processor, "moss-audio", r["source_manifest"], r["source_row"],
                                                            "You are a helpful assistant.", processor.tokenizer), r["id"]
    captions = [r for r in everything if r["source_manifest"] == assets["manifest"]]
    key = lambda r: (r["source_row"], r["segment"])  # noqa: E731
    assert sorted(map(key, captions)) == sorted(map(key, caption_run["rows"]))
    assert {key(r): r["error"] for r in captions} == {key(r): r["error"] for r in caption_run["rows"]}
    for r in captions:
        if r["error"] is None:
            assert r["prompt_id"] == "caption" and r["answer"] and 4 <= r["output_tokens"] <= 8, r
            wave = np.zeros(round((r["segment_end_s"] - r["segment_start_s"]) * 16000), np.float32)
            text = render(processor.tokenizer, spec("moss-audio"),
                          caption(system="You are a helpful assistant.", text=r["prompt"]))
            assert r["prompt_tokens"] == len(processor(text=text, audio=[wave])["input_ids"][0]), r["id"]
