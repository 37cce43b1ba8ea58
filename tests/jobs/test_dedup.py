"""The dedup job end to end on real Ray: generated clips and their copies (other clips and transforms than
the benchmark's), an evaluation set to keep out, bad rows; the kept manifest. The run is killed -9 and resumed,
and what it gives is checked against the corpus: a resume that lost or redid identities would show."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tools.assets import copy, corpus
from tests.conftest import pids, wait_for
from tests.jobs.test_runner import parts

CMD = [sys.executable, "-m", "jobs.dedup", "--config", "configs/dedup-demo.yaml"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("dedup")
    rows = corpus(str(d / "audio"), 10, seed=23, copies=(1, 3), seconds=(3.0, 12.0),
                  transforms=("ogg", "gain", "silence", "cut", "resample", "downmix"))
    rng, evaluation = np.random.default_rng(24), []
    for r in sorted((r for r in rows if not r["transforms"] and r["group"] < 2), key=lambda r: r["id"]):
        x, rate = sf.read(r["audio"], dtype="float32", always_2d=True)
        path, _ = copy(rng, x, rate, str(d / f"eval-{r['group']}"), ("mp3", "gain"))
        evaluation.append({"id": f"eval-{r['group']}", "audio": path, "group": r["group"]})
    (d / "text.wav").write_bytes(b"not audio at all\n" * 20)
    lines = [{"id": r["id"], "audio": r["audio"], "kind": r["kind"]} for r in rows]
    lines += [{"id": "zz-missing", "audio": str(d / "nope.wav")}, {"id": "zz-text", "audio": str(d / "text.wav")}]
    (d / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "eval.jsonl").write_text("".join(json.dumps({"id": e["id"], "audio": e["audio"]}) + "\n" for e in evaluation))
    return {"dir": d, "rows": rows, "manifest": str(d / "m.jsonl"), "eval": str(d / "eval.jsonl"), "lines": lines}


def outputs(out):
    return {r["id"]: r for f in parts(out) for r in pq.read_table(os.path.join(out, f)).to_pylist()}


def dedup(clips, out, *extra, **kw):
    return subprocess.run(CMD + ["--input", clips["manifest"], "--output", out, f"dedup.exclude=[{clips['eval']}]",
                                 *extra], capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def run(clips, tmp_path_factory):
    """One run, killed (kill -9 of its driver) once a few identities are committed, then resumed with the same
    command: the tests below check the resumed output against what the corpus holds."""
    out = str(tmp_path_factory.mktemp("dedup-out") / "out")
    small = ["decode.batch_size=1", "write.rows_per_file=1"]
    log = tmp_path_factory.mktemp("dedup-log") / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(CMD + ["--input", clips["manifest"], "--output", out,
                                       f"dedup.exclude=[{clips['eval']}]", *small],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: len(parts(os.path.join(out, "_identity"))) >= 3, 600, proc, f)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for(lambda: not pids("MapBatches"), 60)
    killed = os.path.exists(os.path.join(out, "_SUCCESS"))
    proc = dedup(clips, out, *small)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "_summary.json")) as f, open(os.path.join(out, "_identity", "_summary.json")) as g:
        return {"out": out, "rows": outputs(out), "summary": json.load(f), "identity": json.load(g),
                "stdout": proc.stdout, "finished_before_the_kill": killed}


def test_every_copy_points_to_its_original_and_no_two_clips_merge(run, clips):
    got = run["rows"]
    assert sorted(got) == sorted(x["id"] for x in clips["lines"])  # every input row once
    for r in clips["rows"]:
        original = f"o{r['group']:05d}"
        assert got[r["id"]]["duplicate_of"] == (original if r["transforms"] else None), (r["id"], r["transforms"])
        assert got[r["id"]]["audio_hash"] and got[r["id"]]["fingerprint"]
    for bad in ("zz-missing", "zz-text"):
        assert got[bad]["error"] and got[bad]["keep"] is False and got[bad]["duplicate_of"] is None
    assert got["zz-missing"]["error"].startswith("decode/missing:")


def test_rows_that_copy_an_evaluation_clip_are_kept_out(run, clips):
    for r in clips["rows"]:
        row = run["rows"][r["id"]]
        assert row["contaminated_by"] == (f"eval-{r['group']}" if r["group"] < 2 else None), r["id"]
        assert row["keep"] == (not r["transforms"] and r["group"] >= 2)


def test_the_summary_counts_clusters_copies_and_contamination(run, clips):
    s, rows = run["summary"], run["rows"].values()
    assert s["rows_in"] == s["rows_out"] == len(clips["lines"]) and s["duplicate_rows"] == 0
    assert s["clusters"] == len({r["duplicate_of"] for r in rows if r["duplicate_of"]}) == 10
    assert s["duplicates"] == sum(r["duplicate_of"] is not None for r in rows)
    assert s["contaminated"] == sum(r["contaminated_by"] is not None for r in rows)
    assert s["rows_kept"] == sum(r["keep"] for r in rows) == 8
    assert "dedup: 10 clusters" in run["stdout"]


def test_kept_rows_are_a_manifest_of_the_input_s_columns(run):
    # The night's test (tests/jobs/test_night.py) captions them as they are.
    kept = os.path.join(run["out"], "kept")
    rows = [r for f in sorted(os.listdir(kept)) for r in pq.read_table(os.path.join(kept, f)).to_pylist()]
    assert sorted(r["id"] for r in rows) == sorted(i for i, r in run["rows"].items() if r["keep"])
    assert set(rows[0]) == {"id", "audio", "kind"}  # the input's columns, nothing of dedup's
    assert len(os.listdir(kept)) == len(parts(run["out"]))  # one kept part per marked part


def test_the_resume_kept_the_identities_the_killed_run_had_committed(run):
    # The clusters it then made are the corpus's: the tests above.
    assert not run["finished_before_the_kill"]
    assert 0 < run["identity"]["rows_resumed"] < run["identity"]["rows_in"]
