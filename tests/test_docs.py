"""README.md and docs/ say what the code does: every link lands on a file, every `python -m jobs.*` command names
a job and a config whose keys, with the command's own changes, the schema accepts (operators.config.parse: no
storage touched, so commands over s3:// and the user's own files are checked too), every bench script exists.
The demo commands themselves run in `make demo` and in the tests of each job."""
import glob
import importlib.util
import json
import os
import re
import shlex

import pytest

from jobs import night
from operators import config

PAGES = ["README.md", *sorted(glob.glob("docs/*.md"))]


def text(page: str) -> str:
    with open(page) as f:  # a command continued with `\` is one line
        return f.read().replace("\\\n", " ")


def commands(prefix: str) -> list[tuple[str, list[str]]]:
    out = []
    for page in PAGES:
        for line in text(page).splitlines():
            at = line.find(prefix)
            if at >= 0:
                words = shlex.split(line[at:].split("`")[0].split(" >>")[0].split(" #")[0])
                out.append((page, words))
    return out


def changes(words: list[str]) -> tuple[list[str], dict]:
    """The command's `key=value` changes (not its usage placeholders) and its --input/--output."""
    flags = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--input", "--output")}
    keys = [w for w in words if "=" in w and not w.startswith(("-", "[")) and not w.endswith("...]")]
    return keys, flags


JOBS = commands("python -m jobs.")


def test_the_pages_name_the_commands_of_every_job():
    named = {w[2] for _, w in JOBS}
    assert {"jobs.night", "jobs.caption", "jobs.dedup", "jobs.quality", "jobs.export"} <= named, named


@pytest.mark.parametrize("page, words", JOBS, ids=[f"{p}:{' '.join(w[2:5])}" for p, w in JOBS])
def test_each_command_names_a_job_and_a_config_it_accepts(page, words):
    module = words[2]
    assert importlib.util.find_spec(module), f"{page}: no module {module}"
    if "--config" not in words:
        return  # prose naming the module
    path = words[words.index("--config") + 1]
    keys, flags = changes(words)
    if module == "jobs.night":
        recipe = config.load_night(path)
        mine = night.by_step(keys, [s.name for s in recipe.steps])
        for s in recipe.steps:
            config.parse(s.config, [f"{k}={json.dumps(v)}" for k, v in s.overrides.items()] + mine[s.name],
                         input="in/check", output="out/check")
    else:
        config.parse(path, keys, input=flags.get("--input"), output=flags.get("--output"))


def test_every_bench_script_named_exists():
    named = {w[1] for _, w in commands(".venv/bin/python bench/")}
    assert named and all(os.path.isfile(n) for n in named), named


def test_every_link_lands_on_a_file():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text(page)):
            if not target.startswith("http"):
                assert os.path.exists(os.path.join(os.path.dirname(page), target)), (page, target)
