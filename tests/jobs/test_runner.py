"""Crashes and reruns through the real pipeline: kill the engine and its actor mid-run (kill -9 of the driver
and a resume: tests/jobs/test_night.py, through the night's driver). Every input row must come out exactly once."""
import io
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tests.conftest import pids, wait_for

CMD = [sys.executable, "-m", "jobs.caption", "--config", "configs/caption-demo.yaml"]
# Small files and batches so that progress is committed in small steps; long outputs so that it is slow.
SMALL = ["write.rows_per_file=3", "engine.batch_size=3", "decode.batch_size=3", "sampling.max_tokens=64",
         "sampling.min_tokens=64", "progress.every_s=2"]
PROGRESS = re.compile(r"^progress: ([\d.]+)/(\d+) input rows \(([\d.]+) %\), (\d+) output rows; ([\d.]+) rows/s last 2 s, "
                      r"([\d.]+) overall; errors (.+); audio ([\d.]+) h; ETA (.+)$", re.M)


def manifest(d, n):
    rows = []
    for i in range(n):
        t = np.arange(16000) / 16000
        sf.write(d / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t), 16000)
        rows.append(json.dumps({"id": f"c{i}", "audio": f"c{i}.wav"}))
    (d / "m.jsonl").write_text("\n".join(rows) + "\n")
    return str(d / "m.jsonl")


def parts(out):
    return sorted(f for f in os.listdir(out) if f.startswith("part-")) if os.path.isdir(out) else []


def rows(out):
    return [r for f in parts(out) for r in pq.read_table(os.path.join(out, f)).to_pylist()]


def kill_all(pattern):
    for pid in pids(pattern):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(m, out, log, *extra):
    return subprocess.Popen(CMD + ["--input", m, "--output", out, *SMALL, *extra], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_engine_killed_stalled_and_its_actor_killed_mid_run_job_completes(assets, tmp_path):
    n = 60
    m, out = manifest(tmp_path, n), str(tmp_path / "out")
    with open(tmp_path / "run.log", "w") as log:
        # Longer answers than SMALL's: rows must be left for each fault after the engine before it came back. An
        # answer takes seconds, more while the suite's other lane runs a job: 30 s without one is a stall.
        proc = start(m, out, log, "engine.stall_s=30", "sampling.max_tokens=160", "sampling.min_tokens=160")

        def said(event):  # the driver says it when the first row retried on the new engine is committed
            return lambda: f"event: generate/{event}" in open(tmp_path / "run.log").read()

        try:
            wait_for(lambda: len(parts(out)) >= 1, 600, proc, log)
            engines = pids("EngineCore")
            assert engines, "no vLLM engine-core process found"
            for pid in engines:
                os.kill(pid, signal.SIGKILL)  # the engine dies under the actor: replaced in place
            wait_for(said("engine_dead"), 600, proc, log)
            stopped = pids("EngineCore")
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)  # alive but answering nothing, as a wedged GPU looks: replaced
            wait_for(lambda: not set(pids("EngineCore")) & set(stopped), 120, proc, log)
            wait_for(said("engine_stalled"), 600, proc, log)
            actors = pids("MapBatches\\(Generate\\)")
            assert actors, "no engine actor process found"
            for pid in actors:
                os.kill(pid, signal.SIGKILL)  # the actor dies: Ray restarts it and retries its batches
            assert proc.wait(timeout=600) == 0
            wait_for(lambda: not pids("EngineCore"), 30)  # the killed actor's engine too
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            kill_all("EngineCore")
    final = rows(out)
    assert sorted(r["id"] for r in final) == sorted(f"c{i}" for i in range(n))
    assert all(r["error"] is None and r["caption"] is not None for r in final)
    log = open(tmp_path / "run.log").read()
    assert f"rows in {n}  rows out {n}" in log
    # The driver's log says which engine was lost and how, once each; the rows it held say so too.
    for how, did in (("dead", "died"), ("stalled", "stalled")):
        said = re.findall(rf"^event: generate/engine_{how}: engine actor pid \d+ on [\d.]+: its engine {did} and was "
                          r"replaced, the rows it held retried$", log, re.M)
        assert len(said) == 1, log[-3000:]
        assert any(said[0][len("event: "):] in (r["warning"] or "") for r in final)
    # The progress lines of a piped run, against the parquet: counts only grow, the last one is the whole run.
    lines = PROGRESS.findall(log)
    assert len(lines) >= 3, log[-3000:]
    done = [float(x[0]) for x in lines]
    assert done == sorted(done) and all(int(x[1]) == n for x in lines)
    last = lines[-1]
    assert (float(last[0]), float(last[2]), int(last[3]), last[6]) == (n, 100.0, len(final), "none")
    assert float(last[7]) == pytest.approx(sum(r["segment_end_s"] - r["segment_start_s"] for r in final) / 3600,
                                           abs=1e-4)


def test_rerun_over_thousands_of_committed_rows_starts_no_engine(assets, tmp_path):
    """Everything committed: the rerun plans nothing, starts no engine (its model folder is empty, so one
    would fail to load), keeps every part, and its summary agrees with the parquet."""
    from collections import Counter

    from bench.scale import make_manifests, make_outputs

    n = 3000
    manifests = make_manifests(str(tmp_path / "manifests"), n)
    out = str(tmp_path / "out")
    make_outputs(manifests, out, 1.0)
    before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in parts(out)}
    (tmp_path / "no-model").mkdir()
    proc = subprocess.run(CMD + ["--input", manifests[0], "--output", out, f"model.path={tmp_path / 'no-model'}",
                                 "write.rows_per_file=1000"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"plan: {n} rows in, {n} already committed, 0 to do in 0 read tasks" in proc.stdout
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in parts(out)} == before
    with open(os.path.join(out, "_summary.json")) as f:
        summary = json.load(f)
    table = [r for f in parts(out) for r in pq.read_table(os.path.join(out, f)).to_pylist()]
    assert summary["rows_in"] == summary["rows_out"] == summary["output_rows"] == len(table) == n
    assert summary["rows_resumed"] == n and summary["output_rows_this_run"] == 0 and summary["stages"] == {}
    assert summary["errors_by_kind"] == dict(Counter(r["error"].split(":")[0] for r in table if r["error"]))
    assert summary["rows_ok"] == sum(r["error"] is None for r in table)
    assert summary["audio_hours"] == pytest.approx(
        sum(r["segment_end_s"] - r["segment_start_s"] for r in table if r["error"] is None) / 3600, abs=1e-6)
    assert summary["output_tokens"] == sum(r["output_tokens"] for r in table if r["error"] is None)
    assert os.path.exists(os.path.join(out, "_SUCCESS"))


def test_dry_run_plans_without_an_engine(assets, tmp_path):
    """The plan of a half-committed output, its samples fetched, no engine; a model that would not load: exit 2."""
    from bench.scale import make_manifests, make_outputs

    manifests = make_manifests(str(tmp_path / "manifests"), 300)
    out = str(tmp_path / "out")
    make_outputs(manifests, out, 0.5)
    before = sorted(os.listdir(out))
    proc = subprocess.run(CMD + ["--input", manifests[0], "--output", out, "--dry-run"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: 300 rows in 1 manifests; 150 already committed" in proc.stdout
    assert "150 to do in" in proc.stdout and "model .cache/models/tiny-qwen2-audio (qwen2-audio): resolves" in proc.stdout
    assert "sample r000000150: decode/missing:" in proc.stdout  # the synthetic rows name no real audio
    assert sorted(os.listdir(out)) == before  # nothing written, no summary, no engine
    (tmp_path / "empty-model").mkdir()
    proc = subprocess.run(CMD + ["--input", manifests[0], "--output", out, "--dry-run",
                                 f"model.path={tmp_path / 'empty-model'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "has no config.json" in proc.stderr


@pytest.mark.parametrize("overrides, stall, local, said", [
    (["engine.num_gpus=1"], 20, False, r"no node can host the engine \(1 GPU, 1 CPU\)"),
    # 15 s: past a worker's start, short of any engine's (vLLM's import alone takes longer on this box).
    ([], 15, True, r"actors not ready: (.+, )?1 x MapWorker\(MapBatches\(Generate\)\) starting(, .+)?"),
], ids=["no-node", "starting"])
def test_a_stalled_job_stops_and_says_what_it_waits_for(assets, tmp_path, overrides, stall, local, said):
    """Resources lost and not replaced look like the first: an engine actor asking for a GPU on a cluster without
    one is never placed. An engine that takes longer to start than run.stall_s (here: a limit below any engine's
    start) is the second. Either way the job stops after run.stall_s with one line saying what it waited for,
    exit 1, and nothing of it is left running."""
    m, out = manifest(tmp_path, 4), str(tmp_path / "out")
    # The second on the job's own local instance: Ray's state API, which says where actors are, needs the dashboard
    # the lane's head runs without.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" or not local}
    proc = subprocess.run(CMD + ["--input", m, "--output", out, *overrides, f"run.stall_s={stall}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = next((x for x in proc.stderr.splitlines() if x.startswith("stalled:")), proc.stderr[-2000:])
    assert re.match(rf"stalled: no row committed for {stall // 10}\d s \(run.stall_s={stall}\): {said}; the committed "
                    r"rows are kept and the same command resumes$", line), line
    # Ray shut down at exit, Ray Data's executor thread calls Ray again: it must not connect on its own (ray.init from
    # a thread says so first), which would join the cluster as a new job or start a local instance (runner.as_driver).
    assert "not the main thread" not in proc.stderr, proc.stderr[-3000:]
    wait_for(lambda: not pids("MapBatches"), 60)


def test_each_line_the_driver_prints_reaches_its_log_in_one_write(monkeypatch):
    """As `ray job submit` runs a driver (PYTHONUNBUFFERED), print() writes a line and its newline apart, and a
    line Ray logs meanwhile from another thread into the same file lands between them (seen: a progress event
    glued to Ray Data's next log line, which the engine-fault test above then did not find). The job's streams
    are made to write each line whole."""
    from jobs import runner

    writes = []

    class Log(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            writes.append(bytes(b))
            return len(b)

    monkeypatch.delenv("RAY_ENABLE_AUTO_CONNECT", raising=False)  # as_driver sets it: this process gets it back
    for name in ("stdout", "stderr"):  # unbuffered, as python -u and PYTHONUNBUFFERED make them
        monkeypatch.setattr(sys, name, io.TextIOWrapper(Log(), write_through=True))
    print("event: a")
    assert writes == [b"event: a", b"\n"]
    writes.clear()
    runner.as_driver()
    print("event: b")
    print("stalled: c", file=sys.stderr)
    assert writes == [b"event: b\n", b"stalled: c\n"]
