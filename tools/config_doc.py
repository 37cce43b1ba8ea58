"""docs/config.md from the config schema in operators/config.py: every key with its type, default and meaning,
the quality rules with the library's values (configs/rules.yaml), and a night's recipe keys.

    python -m tools.config_doc          # writes docs/config.md
    python -m tools.config_doc --check  # exit 1 when docs/config.md is not what the schema says

tests/tools/test_config_doc.py runs the check, so the page never drifts from the code.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing

import yaml
from pydantic import BaseModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "config.md")

HEAD = """# Config keys

Generated from `operators/config.py` by `python -m tools.config_doc`; a test fails when this page and the
code disagree. A job's config is a YAML file (`configs/<job>.yaml`); any key can be changed on the command
line as `key=value`, read as YAML (`sampling.max_tokens=128`, `sampling.stop=[".", "!"]`), and in a night as
`STEP.key=value`. A key that does not exist, or a value it does not accept, stops the job before any work,
naming the key and what is allowed.
"""


def model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model a field holds (also when optional), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return model_of(args[0])
    return None


def kind(annotation) -> str:
    """A field's type as a reader writes it: `int`, `str or null`, `[min, max]`, `{str: float}`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return kind(args[0])
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else kind(a) for a in args)
    if origin is list:
        return f"list of {kind(args[0])}"
    if origin is tuple:
        return "[min, max]"
    if origin is dict:
        return f"{{{kind(args[0])}: {kind(args[1])}}}"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value)}`"


def described(field, key: str) -> str:
    if not field.description:
        raise SystemExit(f"{key}: no description; give its Field one in operators/config.py")
    return field.description.replace("|", "\\|")


def rows(model: type[BaseModel], prefix: str = "", only: tuple[str, ...] = ()) -> list[str]:
    """One table row per key of `model` (or of `only`), a nested model's keys in place (`decode.vad.threshold`)."""
    out = []
    for name, field in model.model_fields.items():
        key, inner = f"{prefix}{name}", model_of(field.annotation)
        if only and name not in only:
            continue
        if inner is None:
            out.append(f"| `{key}` | {kind(field.annotation)} | {default(field)} | {described(field, key)} |")
        else:
            out += [f"| `{key}.*` | | | {described(field, key)} |", *rows(inner, f"{key}.")]
    return out


def table(lines: list[str]) -> list[str]:
    return ["| key | type | default | meaning |", "|---|---|---|---|", *lines, ""]


def library_value(value) -> str:
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} phrases (configs/rules.yaml)"
    return f"`{json.dumps(value)}`"


def render() -> str:
    from operators.config import JobCfg, NightCfg, StepCfg
    from operators.rules import Rules

    sections = {n: f for n, f in JobCfg.model_fields.items() if model_of(f.annotation) is not None}
    top = tuple(n for n in JobCfg.model_fields if n not in sections)
    out = [HEAD, "## A job", "", *table(rows(JobCfg, only=top))]
    for name, field in sections.items():
        out += [f"## `{name}`: {described(field, name)}", "", *table(rows(model_of(field.annotation), f"{name}."))]
    with open(os.path.join(ROOT, "configs", "rules.yaml")) as f:
        library = yaml.safe_load(f)
    out += ["## Quality rules", "",
            "Each rule is a named flag in a row's `flags`, defined with its parameters and check in "
            "operators/rules.py; the values are its defaults with the library's changes (`quality.library`, "
            "configs/rules.yaml: the phrase lists), which a job changes with `quality.rules.<rule>.<key>=value` "
            "and a prompt with its own `quality:`. Every rule has `enabled` and `drop` (a flagged row is not kept).",
            "",
            "| rule | flags | key | library value | meaning |", "|---|---|---|---|---|"]
    for name, field in Rules.model_fields.items():
        out.append(f"| `{name}` | {described(field, name)} | | | |")
        for key, param in model_of(field.annotation).model_fields.items():
            value = library.get(name, {}).get(key, param.get_default(call_default_factory=True))
            out.append(f"| | | `{key}` | {library_value(value)} | {described(param, f'{name}.{key}')} |")
    out += ["", "## A night", "",
            "`python -m jobs.night --config configs/night.yaml`: the steps run in order by one driver (docs/night.md).",
            "", *table(rows(NightCfg, only=("input", "output"))), "Each of `steps`:", "", *table(rows(StepCfg))]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when docs/config.md is stale")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    text = render()
    if args.check:
        with open(DOC) as f:
            if f.read() != text:
                print("docs/config.md is stale: run python -m tools.config_doc", file=sys.stderr)
                return 1
        return 0
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
