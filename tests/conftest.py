"""Shared fixtures: the embedded default assets (built once, cached in .cache/) and a local Ray."""
from __future__ import annotations

import os
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
            "manifest": os.path.join(root, "samples", "manifest.jsonl"),
            "samples": os.path.join(root, "samples")}


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()
