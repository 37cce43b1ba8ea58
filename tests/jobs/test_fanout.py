"""Several prompts per clip in one pass: each clip fetched and decoded once, K rows out, ids unique and
stable, and a resume after losing committed files redoes exactly what was lost."""
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
def run(server, tmp_path_factory):
    d = tmp_path_factory.mktemp("fanout")
    manifest = d / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": c.split(".")[0], "audio": f"{server['url']}/{c}"}) + "\n"
                                for c in CLIPS))
    out = str(d / "out")
    proc = subprocess.run(CMD + ["--input", str(manifest), "--output", out], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "manifest": str(manifest), "rows": rows(out), "served": dict(server["served"])}


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


def test_output_ids_are_unique_and_a_resume_redoes_exactly_what_was_lost(run, server, assets):
    ids = [r["output_id"] for r in run["rows"]]
    assert len(set(ids)) == len(ids) == len(CLIPS) * len(PROMPTS)
    parts = sorted(glob.glob(f"{run['out']}/part-*.parquet"))
    assert len(parts) >= 2
    lost = {r["output_id"] for r in pq.read_table(parts[0]).to_pylist()}
    os.remove(parts[0])  # as if a crash had lost a committed file
    server["served"].clear()
    proc = subprocess.run(CMD + ["--input", run["manifest"], "--output", run["out"]], capture_output=True,
                          text=True, timeout=900)
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
