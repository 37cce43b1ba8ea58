"""Shared fixtures: the embedded default assets (built once, cached in .cache/) and a local Ray."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # configs name paths relative to the repo root, as users run them


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
def ray_local():
    import ray

    from jobs.runner import LOCAL

    ray.init(address="local", ignore_reinit_error=True, log_to_driver=False, **LOCAL)  # as a job's own instance
    yield ray
    ray.shutdown()


# Windows of long clips overlap by 2 s (decode.overlap_s), so what straddles a cut is heard whole once.
# float32: the tensor-parallel test compares greedy text with this run's, and TP=2 sums in another order;
# in bfloat16 the near-tied logits of random weights made the text differ on some CPUs.
CAPTION_CMD = [sys.executable, "-m", "jobs.caption", "--config", "configs/caption-demo.yaml", "decode.overlap_s=2",
               "engine.dtype=float32"]


@pytest.fixture(scope="session")
def caption_run(assets, tmp_path_factory):
    """The caption demo once for the session (tests of caption, export and the review page read it)."""
    out = str(tmp_path_factory.mktemp("caption") / "out")
    proc = subprocess.run(CAPTION_CMD + ["--output", out, "sampling.max_tokens=12"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
