"""Shared fixtures: the embedded default assets (built once, cached in .cache/) and a local Ray."""
from __future__ import annotations

import os
import socket
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # configs name paths relative to the repo root, as users run them


@pytest.fixture(scope="session")
def assets() -> dict:
    from jobs import assets as build

    root = os.path.join(ROOT, ".cache")
    build.main(["--root", root])
    return {"model": os.path.join(root, "models", "tiny-qwen2-audio"),
            "af3": os.path.join(root, "models", "tiny-audio-flamingo-3"),
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

    ray.init(ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()
