"""Shared fixtures: the embedded default assets (built once, cached in .cache/) and a local Ray."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # configs name paths relative to the repo root, as users run them
# Ray heads enable token auth, and a process reads RAY_AUTH_MODE once, when it first talks to Ray: set from the
# start, every driver of the session (this process too, whichever test first touches Ray) sends the token. The
# token is the lane's own, in the environment every process of the lane inherits (as Ray's own tests give it):
# `ray start --head` does not make one where ~/.ray/auth_token is missing (a fresh machine), and two lanes making
# that file at once could each start heads with a token the other then overwrites.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
# `make test` runs the suite in two lanes (pytest-xdist): while one lane's job imports vLLM or loads its engine on
# one core, the other's work runs on the other core. Every Ray instance a lane starts (its head, a job's local
# instance, a test's cluster) keeps its sessions under a folder of the lane's own, where Ray's workers and the
# engine processes they start write their output: that is how a test finds its lane's processes (`pids`).
RAY_ROOT = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="em")  # short: Ray's socket paths go under it


def pytest_sessionfinish(exitstatus):
    """The lane's Ray sessions (their logs) are kept where a test failed, else removed."""
    if exitstatus == 0:
        shutil.rmtree(RAY_ROOT, ignore_errors=True)


# The modules that read the session's caption run: one lane takes them all, so that it runs once.
CAPTION_RUN_READERS = {f"tests/jobs/test_{m}.py" for m in ("aqa", "caption", "export", "report")}
# Seconds a lane spent on each unit (a module, or the caption run's readers together) in a full two-lane run
# (`--durations`, 2026-12-03); what is not here takes a few seconds. Longest first: a lane that finishes a unit
# takes the longest left, so that the last to start are short and the lanes end together. In the order they were
# collected (the cluster's first, as it is the longest), the 4-minute transcription module came last and one lane
# idled for up to 100 s at the end.
SECONDS = {"tests/jobs/test_ray_cluster.py": 790, "caption run": 500, "tests/jobs/test_night.py": 340,
           "tests/jobs/test_rewrite.py": 295, "tests/jobs/test_runner.py": 240, "tests/jobs/test_transcribe.py": 220,
           "tests/jobs/test_quality.py": 110, "tests/jobs/test_fanout.py": 100, "tests/jobs/test_bad_inputs.py": 95,
           "tests/operators/test_storage.py": 65, "tests/jobs/test_dedup.py": 65}


def unit(nodeid: str) -> str:
    """The unit a lane takes whole (a module's fixtures run once): its module, the caption run's readers together."""
    module = nodeid.split("::", 1)[0]
    return "caption run" if module in CAPTION_RUN_READERS else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """A lane takes whole units (tests/conftest.py's `unit`). (xdist's own loadgroup cannot group the caption run's
    readers: with pytest 9.2 it silently distributes test by test, pytest-xdist#1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit(nodeid)

    return Lanes(config, log)


def pytest_collection_modifyitems(items):
    """The units longest first (`SECONDS`); `make test` hands them out in this order (--no-loadscope-reorder)."""
    items.sort(key=lambda item: -SECONDS.get(unit(item.nodeid), 0))


@pytest.fixture(scope="session")
def assets() -> dict:
    from tools import assets as build

    root = os.path.join(ROOT, ".cache")
    build.main(["--root", root])
    return {"model": os.path.join(root, "models", "tiny-qwen2-audio"),
            "af3": os.path.join(root, "models", "tiny-audio-flamingo-3"),
            "moss": os.path.join(root, "models", "tiny-moss-audio"),
            "clap": os.path.join(root, "models", "tiny-clap"),
            "aqa": os.path.join(root, "aqa"),
            "speech": os.path.join(root, "speech"),
            "longform": os.path.join(root, "longform"),
            "manifest": os.path.join(root, "samples", "manifest.jsonl"),
            "samples": os.path.join(root, "samples")}


def wait_for(predicate, timeout, proc=None, log=None):
    """Until `predicate()`; fails when `timeout` passes first or the job `proc` ends, with the tail of its `log`."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            said = open(log.name).read()[-3000:] if log is not None else ""
            raise AssertionError(f"job ended early with {proc.returncode}\n{said}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def pids(pattern):
    """This lane's Ray workers and engine processes whose command line matches `pattern` (as `pgrep -f`): those
    whose output goes to a log of one of the lane's Ray sessions (the other lane's, or a user's, are not touched)."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid() and logs_to_lane(int(p))]


def logs_to_lane(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/1").startswith(RAY_ROOT + os.sep)
    except OSError:  # gone, or no stdout
        return False


def ray_started(output: str) -> bool:
    """Whether a job's output says it started Ray or joined the session's head (ray.init's own lines)."""
    return "Started a local Ray instance" in output or "Connected to Ray cluster" in output


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_SECRET = "s3cr3t-never-printed-0123456789"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, with credentials and endpoint in the environment as a user would set
    them; s3fs talks to it over HTTP as it would to AWS (nothing is mocked in-process)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "earmark-test", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in [*env, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(env, AWS_ENDPOINT_URL_S3=f"http://{host}:{port}")
    yield {"endpoint": f"http://{host}:{port}", "env": env}
    server.stop()
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """One Ray head for the lane's jobs, joined through RAY_ADDRESS as on a cluster (`ray job submit` sets
    it too): a job's own local instance costs it ~10 s to start, and the suite runs dozens of jobs. A test
    that needs its own cluster (nodes lost, `ray job submit`) sets RAY_ADDRESS for its job itself. The head has
    the local instance's settings (jobs.runner.LOCAL), started from the repository root as users run jobs."""
    from jobs.runner import LOCAL

    port, agent = free_port(), free_port()
    # `ray start` returns once the head is up; its processes keep its process group, which stops only them at
    # the end (`ray stop` would stop every Ray instance on the machine). The job agent's port is a free one: at
    # its default it clashes with another Ray's agent.
    start = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
             f"--port={port}", f"--dashboard-agent-listen-port={agent}", "--include-dashboard=false",
             f"--num-cpus={os.cpu_count()}", "--disable-usage-stats",
             f"--system-config={json.dumps(LOCAL['_system_config'])}"]
    log = tmp_path_factory.mktemp("ray") / "head.log"
    proc = subprocess.Popen(start, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    yield os.environ["RAY_ADDRESS"]
    os.environ.pop("RAY_ADDRESS") if old is None else os.environ.__setitem__("RAY_ADDRESS", old)
    os.killpg(proc.pid, signal.SIGTERM)
    try:  # its processes stop one by one; what is left after 10 s is killed
        wait_for(lambda: not group_alive(proc.pid), 10)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def ray_driver(ray_head):
    """This process as a driver on the session's head."""
    import ray

    ray.init(address=ray_head, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


# Windows of long clips overlap by 2 s (decode.overlap_s), so what straddles a cut is heard whole once.
# float32: the tensor-parallel test compares greedy text with this run's, and TP=2 sums in another order;
# in bfloat16 the near-tied logits of random weights made the text differ on some CPUs.
CAPTION_CMD = [sys.executable, "-m", "jobs.caption", "--config", "configs/caption-demo.yaml", "decode.overlap_s=2",
               "engine.dtype=float32"]


@pytest.fixture(scope="session")
def caption_run(assets, tmp_path_factory):
    """The caption demo once for the session (tests of caption, export and the review page read it), as on a
    laptop: in a Ray instance of its own, not on the session's head."""
    out = str(tmp_path_factory.mktemp("caption") / "out")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(CAPTION_CMD + ["--output", out, "sampling.max_tokens=12"], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Started a local Ray instance" in proc.stderr, proc.stderr[-3000:]
    table = pa.concat_tables(
        [pq.read_table(os.path.join(out, f)) for f in sorted(os.listdir(out)) if f.endswith(".parquet")],
        promote_options="default")
    with open(assets["manifest"]) as f:
        manifest = [json.loads(line) for line in f]
    with open(os.path.join(out, "_summary.json")) as f:
        summary = json.load(f)  # this run's: a test's rerun on the output writes its own
    return {"out": out, "rows": table.to_pylist(), "table": table, "manifest": manifest, "stdout": proc.stdout,
            "summary": summary}


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, through selenium and chromedriver: what a person would open pages with."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    # Debian's chromium and chromium-driver (`make test` installs them): never a downloaded driver.
    assert shutil.which("chromium") and shutil.which("chromedriver"), "apt-get install chromium chromium-driver"
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()
