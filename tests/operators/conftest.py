"""The caption demo's config and its quality rules per prompt: the rules' tests and the quality stage's."""
import pytest

from operators import config as config_mod


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    (d / "m.jsonl").write_text("{}\n")
    (d / "model").mkdir()
    return config_mod.load("configs/caption-demo.yaml", [f"model.path={d / 'model'}"], input=str(d / "m.jsonl"))


@pytest.fixture(scope="module")
def rules(cfg):
    return config_mod.quality_rules(cfg)
