"""The night end to end on the real engine and Ray: dedup -> caption -> quality -> export over a corpus that
grows. Night 1 over one shard; night 2 over it and a new shard (new clips and a copy of a night-1 clip whose id
sorts first), killed (kill -9 of the driver) in the middle of its caption step and run again with the same
command. Every step then did only the new rows, nothing committed on night 1 changed, and every row is there
once. Reruns with another config are refused, per key group, naming the step and the key."""
import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from jobs import night
from tools.assets import copy, corpus
from tests.conftest import pids, wait_for
from tests.jobs.test_runner import parts

CMD = [sys.executable, "-m", "jobs.night", "--config", "configs/night-demo.yaml"]
# The same both nights (sampling determines the rows); one row at a time, one per commit, so that a kill lands
# mid-step: the killer acts within 0.1 s of a commit, and each of the 5 rows left takes ~2 s.
ARGS = ["caption.sampling.max_tokens=48", "caption.sampling.min_tokens=48", "caption.write.rows_per_file=1",
        "caption.engine.batch_size=1", "caption.engine.max_inflight_batches=1", "caption.decode.batch_size=1",
        "dedup.dedup.exclude=[]"]
STEPS = ("dedup", "caption", "quality", "export")


def rows_of(folder):
    return [r for f in parts(folder) for r in pq.read_table(os.path.join(folder, f)).to_pylist()]


def files(root):
    """Every committed part under the night's root: path -> sha1 of its bytes."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n.startswith("part-"):
                with open(os.path.join(d, n), "rb") as f:
                    out[os.path.relpath(os.path.join(d, n), root)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def nights(assets, tmp_path_factory):
    d = tmp_path_factory.mktemp("night")
    rows = corpus(str(d / "audio"), 12, seed=31, copies=(1, 1), seconds=(3.0, 6.0),
                  transforms=("ogg", "gain", "silence", "resample"))
    x, rate = sf.read(next(r["audio"] for r in rows if r["id"] == "o00000"), dtype="float32", always_2d=True)
    path, _ = copy(np.random.default_rng(5), x, rate, str(d / "audio" / "late-copy"), ("gain", "silence", "ogg"))
    shard1 = [r for r in rows if r["group"] < 6]
    shard2 = [r for r in rows if r["group"] >= 6] + [{"id": "a-late-copy", "audio": path, "group": 0}]
    (d / "in").mkdir()
    root = str(d / "root")

    def write(name, shard):
        (d / "in" / name).write_text("".join(json.dumps({"id": r["id"], "audio": r["audio"]}) + "\n" for r in shard))

    write("shard-1.jsonl", shard1)
    cmd = CMD + ["--input", str(d / "in" / "*.jsonl"), "--output", root, *ARGS]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    snapshot = files(root)
    write("shard-2.jsonl", shard2)
    with open(d / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: len(parts(os.path.join(root, "caption"))) > sum(p.startswith("caption/") for p in snapshot),
                 600, proc, log)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, as in a crash
        proc.wait()
    # Ray workers fate-share with their driver; none of the killed night may still commit. Nor may its engine
    # live on, holding the model's memory (vLLM's processes outlive a killed actor: the watchdog kills them).
    wait_for(lambda: not pids("MapBatches"), 60)
    wait_for(lambda: not pids("EngineCore") and not pids("VLLM::Worker"), 30)
    killed = files(root)
    killed_mid_step = len(parts(os.path.join(root, "caption"))) < 12  # night 2's six not all committed
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    with open(os.path.join(root, "_night.json")) as f:
        record = json.load(f)
    return {"root": root, "input": str(d / "in" / "*.jsonl"), "rows": rows, "shard1": shard1, "shard2": shard2,
            "snapshot": snapshot, "killed": killed, "cmd": cmd,
            "record": record, "killed_mid_step": killed_mid_step, "stdout": first.stdout + second.stdout}


def test_night_2_rewrites_nothing_of_night_1_nor_of_its_killed_attempt(nights):
    assert nights["killed_mid_step"]  # the kill landed in the caption step, not after it
    now = files(nights["root"])
    assert {p: now.get(p) for p in nights["snapshot"]} == nights["snapshot"]
    assert {p: now.get(p) for p in nights["killed"]} == nights["killed"]
    assert all(any(p.startswith(f"{s}/") for p in set(now) - set(nights["snapshot"])) for s in STEPS)


def test_dedup_keeps_what_night_1_kept_and_marks_the_late_copy(nights):
    marked = {r["id"]: r for r in rows_of(os.path.join(nights["root"], "dedup"))}
    assert sorted(marked) == sorted(r["id"] for r in nights["shard1"] + nights["shard2"])  # each row once
    assert marked["o00000"]["keep"] and marked["o00000"]["duplicate_of"] is None
    assert marked["a-late-copy"]["duplicate_of"] == "o00000" and not marked["a-late-copy"]["keep"]
    for r in nights["rows"]:
        assert marked[r["id"]]["duplicate_of"] == (None if r["id"].startswith("o") else f"o{r['group']:05d}"), r["id"]
    kept = rows_of(os.path.join(nights["root"], "dedup", "kept"))
    assert sorted(r["id"] for r in kept) == [f"o{g:05d}" for g in range(12)]


def test_every_step_did_only_the_new_rows_on_night_2(nights):
    root = nights["root"]
    captions = rows_of(os.path.join(root, "caption"))
    assert sorted(r["output_id"] for r in captions) == sorted(f"o{g:05d}/caption/0" for g in range(12))
    night1_runs = {r["run_id"] for r in captions if r["id"] in {f"o{g:05d}" for g in range(6)}}
    # Engine requests on night 2: the new kept clips, once each, over the killed attempt and the rerun.
    assert sorted(r["id"] for r in captions if r["run_id"] not in night1_runs) == [f"o{g:05d}" for g in range(6, 12)]
    for step in ("quality", "export"):
        assert sorted(r["output_id"] for r in rows_of(os.path.join(root, step))) == sorted(r["output_id"] for r in captions)
    assert all(r["error"] is None and r["caption"] for r in captions)


def test_the_record_and_its_funnel_per_night(nights):
    one, two = nights["record"]["nights"]
    assert one["status"] == two["status"] == "ok" and two["attempts"] == 2
    assert [s["name"] for s in two["steps"]] == list(STEPS)
    funnels = [dict(night.funnel(one, None)), dict(night.funnel(two, one))]
    assert funnels[0] == {"rows in": 12, "unique": 6, "kept": 6, "caption: generated": 6,
                          "quality: kept by quality": 6, "export: exported": 6}
    assert funnels[1] == {"rows in": 13, "unique": 6, "kept": 6, "caption: generated": 6,
                          "quality: kept by quality": 6, "export: exported": 6}
    assert "night 2: 4 steps" in nights["stdout"] and "rows in 13 -> unique 6 -> kept 6" in nights["stdout"]


def test_the_export_adds_shards_and_its_card_counts_them_all(nights, tmp_path):
    import datasets

    out = os.path.join(nights["root"], "export")
    raw = datasets.load_dataset(out, cache_dir=str(tmp_path / "hf")).cast_column(
        "audio", datasets.Audio(decode=False))
    assert sorted(i for s in raw for i in raw[s]["id"]) == [f"o{g:05d}" for g in range(12)]
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    assert all(f"| {s} | {len(raw[s])} |" in card for s in raw)


def test_the_night_page_links_every_step(nights, browser):
    browser.get(f"file://{nights['root']}/_night.html")
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#steps a")]
    assert [h.rsplit("/", 2)[-2] for h in links] == list(STEPS)
    for h in links:
        assert os.path.exists(h.removeprefix("file://"))
    cells = [td.text for td in browser.find_elements("css selector", "#funnel td")]
    assert cells[:2] == ["rows in", "13"]
    assert len(browser.find_elements("css selector", "#nights tr")) == 3  # a header and one row per night
    assert browser.execute_script("return document.querySelector('img').naturalWidth") > 0


@pytest.mark.parametrize("change, key", [
    ("caption.model.path={other}", "model.path"),
    ("caption.prompt.custom.caption=Describe the music.", "prompt.caption.instruction"),
    ("caption.sampling.max_tokens=5", "sampling.max_tokens"),
    ("caption.decode.overlap_s=1", "decode.overlap_s"),
    ("quality.quality.rules.loop.drop=true", "quality.rules.loop.drop"),
    ("export.export.seed=1", "export.seed"),
    ("dedup.dedup.max_ber=0.3", "dedup.max_ber"),
])
def test_a_rerun_with_another_config_is_refused_naming_step_and_key(nights, assets, tmp_path, capsys, change, key):
    other = tmp_path / "same-model-elsewhere"
    other.symlink_to(assets["model"])
    before = files(nights["root"])
    argv = nights["cmd"][3:] + [change.format(other=other)]
    assert night.main(argv) == 2
    err = capsys.readouterr().err
    step = change.split(".", 1)[0]
    assert err.startswith(f"config error: step {step}: {key}") and "--fresh" in err, err
    assert files(nights["root"]) == before


def test_operational_keys_never_refuse(nights):
    cfg = night.config_mod.load_night("configs/night-demo.yaml")
    changes = ["caption.engine.replicas=2", "caption.decode.concurrency=2", "caption.progress.every_s=5",
               "export.export.concurrency=1", "dedup.write.rows_per_file=3", "quality.errors.max_input_error_pct=50"]
    steps = night.plan(cfg, nights["root"], nights["input"], ARGS + changes)
    assert [s.name for s in steps] == list(STEPS)


def recipe(tmp_path, steps):
    path = tmp_path / "night.yaml"
    path.write_text(json.dumps({"input": ".cache/dedup/manifest.jsonl", "output": str(tmp_path / "root"), "steps": steps}))
    return str(path)


DEDUP = {"name": "dedup", "job": "dedup", "config": "configs/dedup-demo.yaml"}
CAPTION = {"name": "caption", "job": "caption", "config": "configs/caption-demo.yaml"}


@pytest.mark.parametrize("steps, extra, said", [
    ([DEDUP, {**CAPTION, "job": "captoin"}], [], "config error: step caption: job: unknown job 'captoin'; known: dedup,"),
    ([DEDUP, {**CAPTION, "name": "dedup"}], [], "step name 'dedup' twice"),
    ([DEDUP, {**CAPTION, "overrides": {"sampling.max_tokns": 3}}], [],
     "config error: step caption: configs/caption-demo.yaml: invalid config\n  sampling.max_tokns: unknown key"),
    ([DEDUP, CAPTION], ["caption.engine.tensor_paralel_size=2"],
     "config error: step caption: configs/caption-demo.yaml: invalid config\n  engine.tensor_paralel_size: unknown key"),
    ([DEDUP, CAPTION], ["captoin.sampling.max_tokens=3"],
     "config error: override 'captoin.sampling.max_tokens=3': begin it with the name of a step (dedup, caption)"),
    ([DEDUP, {**CAPTION, "input": "export"}], [], "step 'caption': input 'export' names no step before it"),
    ([DEDUP, {**CAPTION, "config": "configs/nope.yaml"}], [], "config error: step caption: --config: no such file"),
])
def test_recipe_mistakes_fail_before_any_work_naming_step_and_key(tmp_path, capsys, steps, extra, said):
    assert night.main(["--config", recipe(tmp_path, steps), *extra]) == 2
    assert said in capsys.readouterr().err
    assert not [f for _, _, names in os.walk(tmp_path / "root") for f in names]  # at most the preflight's folders


def test_dry_run_plans_every_step_without_work(assets, tmp_path, capsys):
    root = tmp_path / "root"
    assert night.main(["--config", "configs/night-demo.yaml", "--output", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 24 rows in 1 manifests; 0 already committed" in out and "sample o00001: fetched and decoded" in out
    assert f"step caption (caption): {root}/dedup/kept -> {root}/caption; model .cache/models/tiny-qwen2-audio: " \
           "resolves" in out
    assert f"step export (export): {root}/quality -> {root}/export" in out
    assert not [f for _, _, names in os.walk(root) for f in names]  # nothing written
