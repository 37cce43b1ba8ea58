"""Several prompts per clip in one pass: each clip fetched and decoded once, K rows out, ids unique and
stable, and a resume after losing committed files redoes exactly what was lost. The same run samples three
candidates a row and keeps the one a tiny CLAP scores highest (one engine start for both)."""
import functools
import glob
import http.server
import json
import os
import subprocess
import sys
import threading
from collections import Counter

import pyarrow.parquet as pq
import pytest

PROMPTS = ["caption", "sound_events", "speech_language"]
CLIPS = ["tone-16k.wav", "chirp-44k-stereo.flac", "hum-8k.wav", "tone-48k.ogg"]
CMD = [sys.executable, "-m", "jobs.caption", "--config", "configs/caption-demo.yaml",
       f"prompt.use=[{','.join(PROMPTS)}]", "sampling.max_tokens=6", "write.rows_per_file=2"]


def best_of(assets) -> list[str]:
    """Three sampled candidates a row, each scored by the tiny CLAP; the highest score is kept."""
    return ["sampling.n=3", "sampling.temperature=0.9", "score.enabled=true", "score.num_cpus=0.25",
            f"score.model={assets['clap']}", "quality.select=clap_score"]


@pytest.fixture(scope="module")
def server(assets):
    """The sample clips over HTTP, counting the bytes served per file: a clip fetched twice shows."""
    served = Counter()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def copyfile(self, src, dst):
            data = src.read()
            served[self.path.lstrip("/")] += len(data)
            dst.write(data)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(Handler, directory=assets["samples"]))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{srv.server_address[1]}", "served": served}
    srv.shutdown()


def rows(out):
    return [r for f in sorted(glob.glob(f"{out}/part-*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def run(server, assets, tmp_path_factory):
    d = tmp_path_factory.mktemp("fanout")
    manifest = d / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": c.split(".")[0], "audio": f"{server['url']}/{c}"}) + "\n"
                                for c in CLIPS))
    out = str(d / "out")
    proc = subprocess.run(CMD + [*best_of(assets), "--input", str(manifest), "--output", out], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(f"{out}/_summary.json") as f:
        summary = json.load(f)
    return {"out": out, "manifest": str(manifest), "rows": rows(out), "served": dict(server["served"]),
            "summary": summary}


def test_every_clip_is_asked_every_prompt(run):
    got = Counter((r["id"], r["prompt_id"]) for r in run["rows"])
    assert got == Counter({(c.split(".")[0], p): 1 for c in CLIPS for p in PROMPTS})
    assert all(r["error"] is None and r["caption"] for r in run["rows"])
    prompts = {r["prompt_id"]: r["prompt"] for r in run["rows"]}
    assert prompts["sound_events"].startswith("What sound events occur in the audio?")


def size(assets, clip):
    return os.path.getsize(os.path.join(assets["samples"], clip))


def test_each_clip_is_fetched_and_decoded_once(run, assets):
    """Bytes served per file = twice its size: one fetch (and so one decode) however many prompts it is
    asked, and one by the review page, whose sample holds all 12 rows: a window's prompts share one player."""
    assert run["served"] == {c: 2 * size(assets, c) for c in CLIPS}


def test_best_of_n_keeps_the_highest_scoring_candidate_and_the_other_two(run):
    for r in run["rows"]:
        assert r["error"] is None and len(r["candidates"]) == 2 and len(r["candidate_scores"]) == 2
        assert r["clap_score"] == max([r["clap_score"], *r["candidate_scores"]])
        assert len({r["caption"], *r["candidates"]}) > 1  # sampled, not three copies of one text


def test_clap_score_equals_transformers_on_the_same_audio_and_text(run, assets):
    """The clips are under CLAP's 10 s, so the stage's score is ClapModel's own cosine for the row's audio
    (decoded as the pipeline does, resampled to CLAP's 48 kHz, its feature extractor's own padding) and
    each text."""
    import soxr
    import torch
    from transformers import ClapModel, ClapProcessor

    from operators.decode import load

    model, processor = ClapModel.from_pretrained(assets["clap"]).eval(), ClapProcessor.from_pretrained(assets["clap"])
    for r in run["rows"]:
        local = os.path.join(assets["samples"], r["audio"].rsplit("/", 1)[1])  # the file the server served
        wave = soxr.resample(load(local, 16000)[0], 16000, 48000, quality="HQ")
        texts = [r["caption"], *r["candidates"]]
        # Not processor(text=..., audio=..., padding=True): that padding reaches the feature extractor too and
        # replaces its repeat-padding of short audio.
        features = processor.feature_extractor(wave, sampling_rate=48000, return_tensors="pt")
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                        input_features=features["input_features"])
        expected = (out.text_embeds @ out.audio_embeds[0]).tolist()
        assert [r["clap_score"], *r["candidate_scores"]] == pytest.approx(expected, abs=1e-5)


def per_row(summary) -> dict[str, float]:
    """Bytes a row each stage handed on (Ray Data's block sizes), in pipeline order."""
    return {n: s["bytes_out"] / s["rows_out"] for n, s in summary["stages"].items() if s["rows_out"]}


def test_with_scoring_the_audio_rides_to_the_scorer_and_no_further(run):
    """Decode hands on each window's audio (float32 at the model's 16 kHz), the prompt stage one row a window
    (its prompts ride along, not copies of its audio), the engine one row a prompt to the CLAP scorer, the
    last stage that needs the audio; every stage after the scorer hands on rows a tenth of the shortest
    window's audio or less (scoring off: tests/jobs/test_caption.py, where it leaves with the engine's
    requests)."""
    audio = 4 * 16000 * min(r["segment_end_s"] - r["segment_start_s"] for r in run["rows"])
    sizes = per_row(run["summary"])
    names = list(sizes)
    assert all(sizes[n] > audio for n in ("Decode", "Prompt", "Generate"))
    stages = run["summary"]["stages"]
    assert stages["Prompt"]["rows_out"] == len(CLIPS) and stages["Generate"]["rows_out"] == len(CLIPS) * len(PROMPTS)
    after = names[names.index("Score"):]
    assert len(after) >= 2 and all(sizes[n] < audio / 10 for n in after), sizes


def test_output_ids_are_unique_and_a_resume_redoes_exactly_what_was_lost(run, server, assets):
    ids = [r["output_id"] for r in run["rows"]]
    assert len(set(ids)) == len(ids) == len(CLIPS) * len(PROMPTS)
    parts = sorted(glob.glob(f"{run['out']}/part-*.parquet"))
    assert len(parts) >= 2
    lost = {r["output_id"] for r in pq.read_table(parts[0]).to_pylist()}
    os.remove(parts[0])  # as if a crash had lost a committed file
    server["served"].clear()
    proc = subprocess.run(CMD + [*best_of(assets), "--input", run["manifest"], "--output", run["out"]],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = rows(run["out"])
    assert sorted(r["output_id"] for r in again) == sorted(ids)  # the same ids, none twice
    with open(f"{run['out']}/_summary.json") as f:
        summary = json.load(f)
    assert summary["duplicate_rows"] == 0 and summary["rows_out"] == len(CLIPS)
    # Files of 2 rows split a clip's 3 prompts: what was lost is redone, not what survived next to it.
    redone = {r["output_id"] for r in again if r["run_id"] != run["rows"][0]["run_id"]}
    assert redone == lost
    lost_clips = {i.split("/")[0] for i in lost}
    # Decoded again: the lost rows' clips only; the new review page fetches every clip once.
    assert server["served"] == {c: size(assets, c) * (1 + (c.split(".")[0] in lost_clips)) for c in CLIPS}
