"""The AudioSetCaps demo recipe end to end on the real engines (tiny Qwen2-Audio listens, tiny Qwen3 rewrites,
tiny CLAP accepts), then a standalone rewrite that no try can pass, killed mid-run and resumed."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import wait_for
from tests.jobs.test_runner import parts, rows

RECIPE = "configs/recipes/audiosetcaps-demo.yaml"


@pytest.fixture(scope="module")
def recipe(assets, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("recipe") / "root")
    proc = subprocess.run([sys.executable, "-m", "jobs.night", "--config", RECIPE, "--output", root,
                           "listen.sampling.max_tokens=12", "rewrite.sampling.max_tokens=12"],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(RECIPE) as f:
        steps = {s["name"]: s for s in yaml.safe_load(f)["steps"]}
    with open(steps["rewrite"]["config"]) as f:
        cfg = yaml.safe_load(f)
    return {"root": root, "listen": rows(f"{root}/listen"), "rewrite": rows(f"{root}/rewrite"), "cfg": cfg,
            "overrides": steps["rewrite"]["overrides"], "stdout": proc.stdout}


def window(r):
    return (r["source_manifest"], r["source_row"], r["segment"])


def test_every_clip_window_gets_one_rewrite_row_and_its_sources_are_the_answers(recipe):
    answers = {}
    for r in recipe["listen"]:
        answers.setdefault(window(r), []).append(r)
    out = recipe["rewrite"]
    assert sorted(window(r) for r in out) == sorted(answers)  # one row per window, none twice
    for r in out:
        usable = sorted((a["prompt_id"], a["caption"]) for a in answers[window(r)] if a["error"] is None and a["keep"])
        assert [(s["prompt_id"], s["text"]) for s in r["sources"]] == usable
        assert r["prompt_id"] == "rewrite" and r["output_id"] == f"{r['id']}/rewrite/{r['segment']}"
        assert r["model"] == ".cache/models/tiny-qwen3" and json.loads(r["sampling"])["temperature"] == 0.7
    gone = next(r for r in out if r["id"] == "gone")
    assert gone["error"].startswith("rewrite/no_answers: ") and gone["error"].count("decode/missing") == 3
    assert all(r["error"] is None and r["caption"] for r in out if r["id"] != "gone")
    summary = json.load(open(f"{recipe['root']}/rewrite/_summary.json"))
    assert summary["rows_in"] == summary["rows_out"] == len(recipe["listen"]) and summary["duplicate_rows"] == 0


def test_the_listen_step_asks_its_three_prompts_of_one_copy_of_each_window_s_audio(recipe):
    """Scoring off, three prompts: the prompt stage hands on one row a window (the window's audio once), the
    engine stage one row a prompt, and every stage after it rows a tenth of the shortest window's audio or less:
    the audio left with the requests."""
    from tests.jobs.test_fanout import per_row

    with open(f"{recipe['root']}/listen/_summary.json") as f:
        summary = json.load(f)
    windows = {window(r) for r in recipe["listen"]}
    stages = summary["stages"]
    assert stages["Prompt"]["rows_out"] == len(windows) and stages["Generate"]["rows_out"] == 3 * len(windows)
    good = [r for r in recipe["listen"] if r["error"] is None]
    audio = 4 * 16000 * min(r["segment_end_s"] - r["segment_start_s"] for r in good)
    sizes = per_row(summary)
    names = list(sizes)
    after = names[names.index("Generate"):]
    assert len(after) >= 2 and all(sizes[n] < audio / 10 for n in after), sizes


def test_each_row_lists_the_rows_it_was_made_from(recipe):
    listen = {(os.path.basename(p), i): r for p in parts(f"{recipe['root']}/listen")
              for i, r in enumerate(pq.read_table(f"{recipe['root']}/listen/{p}").to_pylist())}
    for r in recipe["rewrite"]:
        made_from = [listen[(os.path.basename(p), i)] for p, i in zip(r["input_part"], r["input_row"])]
        assert {window(a) for a in made_from} == {window(r)}
        assert len(made_from) == 3  # the recipe's three questions


def test_the_text_models_prompt_is_its_chat_template_over_the_answers_and_labels(recipe):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(".cache/models/tiny-qwen3")
    r_cfg = recipe["cfg"]["rewrite"]
    for r in recipe["rewrite"]:
        if r["error"]:
            continue
        labels = json.loads(r["labels"])
        user = r_cfg["template"].replace("{answers}", "\n".join(s["text"] for s in r["sources"])).replace(
            "{labels}", ", ".join(labels))
        messages = [{"role": "system", "content": r_cfg["system"]}, {"role": "user", "content": user}]
        assert r["prompt"] == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                      enable_thinking=False)
        assert all(s["text"] in r["prompt"] for s in r["sources"]) and all(lb in r["prompt"] for lb in labels)
        assert r["reference"] == ", ".join(labels)


def test_acceptance_follows_the_scores_and_they_are_clap_of_the_window(recipe):
    from operators.score import Score

    clap = Score(column="caption", sample_rate=48_000, model=".cache/models/tiny-clap", num_gpus=0)
    tries = recipe["cfg"]["rewrite"]["max_tries"]
    ok = [r for r in recipe["rewrite"] if r["error"] is None]
    for r in ok:
        assert 1 <= r["tries"] <= tries
        assert r["accepted"] == (r["clap_score"] >= r["clap_reference"])
        assert (r["rejected"] is None) == r["accepted"] and ("rejected" in r["flags"]) != r["accepted"]
        if not r["accepted"]:
            assert r["tries"] == tries and "below its reference's" in r["rejected"]
    batch = pa.Table.from_pylist([{k: r[k] for k in ("audio", "segment_start_s", "segment_end_s", "error")} for r in ok])
    audio = clap.embed_audio(clap.waves(batch))
    for r, a in zip(ok, audio):
        text, ref = clap.embed_text([r["caption"], r["reference"]])
        assert np.isclose(r["clap_score"], float(text @ a), atol=1e-4)
        assert np.isclose(r["clap_reference"], float(ref @ a), atol=1e-4)


def test_the_export_takes_the_rewrites_as_they_are(recipe):
    summary = json.load(open(f"{recipe['root']}/export/_summary.json"))
    kept = [r for r in recipe["rewrite"] if r["keep"]]
    assert summary["rows_exported"] == len(kept) > 0
    exported = [r for f in parts(f"{recipe['root']}/export") if not f.endswith("-dropped.parquet")
                for r in pq.read_table(f"{recipe['root']}/export/{f}").to_pylist()]
    assert sorted(r["caption"] for r in exported) == sorted(r["caption"] for r in kept)
    assert all(isinstance(r["sources"], list) and r["audio"]["bytes"] for r in exported)


def test_a_rewrite_no_try_passes_stops_at_max_tries_and_a_kill_then_resume_gives_each_row_once(recipe, tmp_path):
    """min_clap 1.0: no text scores that, so every window is tried max_tries times and keeps its 2 best distinct
    texts as 2 rows (rewrite.diverse); killed once a part is committed, then resumed: every window's rows once,
    the rows committed before the kill untouched."""
    out, tokens = str(tmp_path / "rewrite"), 16
    args = [sys.executable, "-m", "jobs.rewrite", "--config", "configs/recipes/audiosetcaps-rewrite.yaml",
            "--input", f"{recipe['root']}/listen", "--output", out,
            *(f"{k}={json.dumps(v)}" for k, v in recipe["overrides"].items()),
            "rewrite.accept.min_clap=1.0", "rewrite.max_tries=4", "rewrite.diverse=2", "sampling.n=2",
            "engine.batch_size=1", "engine.max_inflight_batches=1", f"sampling.max_tokens={tokens}",
            f"sampling.min_tokens={tokens}"]
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: parts(out), 900, proc, log)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    before = {f: os.path.getmtime(f"{out}/{f}") for f in parts(out)}
    assert 0 < len(before) < 5, open(tmp_path / "log").read()[-2000:]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(os.path.getmtime(f"{out}/{f}") == t for f, t in before.items())  # never rewritten
    got = rows(out)
    assert sorted(window(r) for r in got) == sorted(window(r) for r in recipe["rewrite"] for _ in range(2))
    by_window = {}
    for r in got:
        by_window.setdefault(window(r), {})[r["prompt_id"]] = r
    for pair in by_window.values():
        assert sorted(pair) == ["rewrite-1", "rewrite-2"] and {r["prompts"] for r in pair.values()} == {2}
        first, second = pair["rewrite-1"], pair["rewrite-2"]
        if first["error"] is None:
            assert first["caption"] != second["caption"] and first["clap_score"] >= second["clap_score"]
            for r in (first, second):
                assert r["tries"] == 4 and r["accepted"] is False and "below rewrite.accept.min_clap=1" in r["rejected"]
            assert (first["output_tokens"], second["output_tokens"]) == (4 * 2 * tokens, 0)  # every try's tokens, once
    summary = json.load(open(f"{out}/_summary.json"))
    assert summary["rows_in"] == summary["rows_out"] == len(recipe["listen"]) and summary["duplicate_rows"] == 0
    assert summary["rows_resumed"] == sum(len(r["input_row"]) for f in before for r in pq.read_table(f"{out}/{f}").to_pylist()
                                          if r["prompt_id"] == "rewrite-1")


@pytest.mark.parametrize("change, said", [
    ("rewrite.rewrite.template='Workers said: {answers.asc_sound}'",
     "config error: step rewrite: rewrite.template: {answers.asc_sound} names the answers of prompt 'asc_sound', which "
     "the input was not asked; its prompts: asc_describe, asc_speech, asc_music"),
    ("rewrite.rewrite.template='{answers} Tags: {tags}'",
     "config error: step rewrite: rewrite.template: {tags} names a column the input does not have"),
    ("rewrite.rewrite.accept.labels=tags", "config error: step rewrite: rewrite.accept.labels: {tags} names a column"),
])
def test_a_template_naming_what_the_input_lacks_fails_before_any_work(assets, tmp_path, capsys, change, said):
    from jobs import night

    assert night.main(["--config", RECIPE, "--output", str(tmp_path / "root"), change]) == 2
    assert said in capsys.readouterr().err
    assert not [f for _, _, names in os.walk(tmp_path / "root") for f in names]  # at most the preflight's folders


def test_a_standalone_rewrite_checks_its_template_against_the_output_it_reads(recipe, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.rewrite", "--config", "configs/recipes/audiosetcaps-rewrite.yaml",
                           "--input", f"{recipe['root']}/listen", "--output", str(tmp_path / "out"),
                           "rewrite.template='{answers.caption} {answers.asc_describe}'"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert ("config error: rewrite.template: {answers.caption} names the answers of prompt 'caption', which the input "
            "was not asked; its prompts: asc_describe, asc_music, asc_speech") in proc.stderr
    assert not [f for _, _, names in os.walk(tmp_path / "out") for f in names]
