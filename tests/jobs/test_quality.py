"""jobs.quality over an existing output, on real Ray: the same rows with flags and keep recomputed, the
summary agreeing with the parquet, changed rules changing flags, and a kill -9 then a resume writing each
row once."""
import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest

from bench.scale import CAPTIONS, make_manifests, make_outputs
from tests.conftest import pids, ray_started, wait_for
from tests.jobs.test_runner import parts

CMD = [sys.executable, "-m", "jobs.quality", "--config", "configs/quality.yaml"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A caption job's output in the real schema (5 captions in turn, 1 % missing-audio errors), no flags."""
    d = tmp_path_factory.mktemp("upstream")
    manifests = make_manifests(str(d / "manifests"), 3000)
    out = str(d / "captions")
    make_outputs(manifests, out, 1.0)
    return {"out": out, "rows": {r["output_id"]: r for f in parts(out)
                                 for r in pq.read_table(os.path.join(out, f)).to_pylist()}}


def rows(out):
    return [r for f in parts(out) for r in pq.read_table(os.path.join(out, f)).to_pylist()]


def run(upstream, out, *extra):
    proc = subprocess.run(CMD + ["--input", upstream["out"], "--output", out, *extra], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def checked(upstream, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quality") / "out")
    proc = run(upstream, out, "write.rows_per_file=500")
    with open(os.path.join(out, "_summary.json")) as f:
        return {"out": out, "rows": rows(out), "summary": json.load(f), "stdout": proc.stdout}


def test_every_row_comes_out_once_with_its_columns(checked, upstream):
    got = {r["output_id"]: r for r in checked["rows"]}
    assert len(got) == len(checked["rows"]) == len(upstream["rows"])
    for oid, before in upstream["rows"].items():
        after = got[oid]
        assert {k: after[k] for k in before} == before  # every column of the input, unchanged
        assert isinstance(after["flags"], list) and isinstance(after["keep"], bool)


def test_flags_follow_the_rules_and_keep_agrees(checked):
    expected = {CAPTIONS[0]: [], CAPTIONS[1]: ["loop"], CAPTIONS[2]: [], CAPTIONS[3]: ["refusal"],
                CAPTIONS[4]: ["too_short"]}
    for r in checked["rows"]:
        if r["error"] is not None:
            assert r["flags"] == [] and r["keep"] is False
        else:
            assert r["flags"] == expected[r["caption"]], r["caption"]
            assert r["keep"] == (r["flags"] == [])  # loop, refusal and too_short all drop


def test_the_summary_counts_what_the_parquet_holds(checked):
    s, table = checked["summary"], checked["rows"]
    assert s["rows_in"] == s["rows_out"] == s["output_rows"] == len(table) and s["duplicate_rows"] == 0
    assert s["flags"] == dict(Counter(f for r in table for f in r["flags"]))
    assert s["rows_kept"] == sum(r["keep"] for r in table)
    assert s["rows_flagged"] == sum(bool(r["flags"]) for r in table)
    assert f"quality: kept {s['rows_kept']} of {len(table)} rows" in checked["stdout"]


def test_a_bad_rule_fails_before_ray(upstream, tmp_path):
    proc = subprocess.run(CMD + ["--input", upstream["out"], "--output", str(tmp_path / "o"),
                                 "quality.rules.lopo.drop=false"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "quality.rules.lopo:" in proc.stderr
    assert not ray_started(proc.stderr + proc.stdout)


def test_kill_then_resume_writes_each_row_once_and_changed_rules_change_the_flags(upstream, tmp_path):
    """Other rules than `checked`'s (both runs the same): too_short needs one word, loop flags without dropping."""
    out = str(tmp_path / "out")
    small = ["write.rows_per_file=20", "read.max_chunk_rows=20", "quality.rules.too_short.min_words=1",
             "quality.rules.loop.drop=false"]
    with open(tmp_path / "run1.log", "w") as log:
        proc = subprocess.Popen(CMD + ["--input", upstream["out"], "--output", out, *small], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: len(parts(out)) >= 1, 300, proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for(lambda: not pids("MapBatches"), 60)
    before = len(rows(out))
    assert 0 < before < len(upstream["rows"]), "the kill should land mid-run"
    run(upstream, out, *small)
    after = rows(out)
    assert sorted(r["output_id"] for r in after) == sorted(upstream["rows"])  # each row once
    with open(os.path.join(out, "_summary.json")) as f:
        summary = json.load(f)
    assert summary["rows_resumed"] == before and summary["output_rows_this_run"] == len(upstream["rows"]) - before
    short = [r for r in after if r["caption"] == CAPTIONS[4]]
    loops = [r for r in after if r["caption"] == CAPTIONS[1]]
    assert short and all(r["flags"] == [] and r["keep"] for r in short)
    assert loops and all(r["flags"] == ["loop"] and r["keep"] for r in loops)  # flagged, no longer dropped
