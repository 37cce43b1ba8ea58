"""docs/config.md says what operators/config.py accepts (render() refuses a key without a description)."""
from tools import config_doc


def test_the_config_page_is_what_the_schema_says():
    with open(config_doc.DOC) as f:
        assert f.read() == config_doc.render(), "docs/config.md is stale: run python -m tools.config_doc"
    assert config_doc.main(["--check"]) == 0
