"""The nightly build: the steps of a recipe in order, one driver, one `ray job submit`.

    python -m jobs.night --config configs/night.yaml [--input URI] [--output ROOT] [--fresh] [--dry-run] \
        [STEP.key=value ...]

A recipe (configs/night.yaml, configs/night-demo.yaml) names the steps, each `{name, job, config, overrides}`.
`--input` feeds the first step; each step writes ROOT/<name>/ and feeds the next (or the step its `input`
names), dedup through its `kept/` manifest. `caption.sampling.max_tokens=64` changes a key of the step named
caption. Every step's config is checked before any work, and so is every step's output: rows made with
another config are refused, naming the step and the key.

Each step is a job of the one runner and resumes like one: over a grown corpus (the next night) every step
does only what is new, and nothing committed on an earlier night is rewritten. The night stops at the first
step that fails, with one line naming it; the same command goes on from there.

ROOT/_night.json keeps one entry per night (a rerun after a failure continues its night): per step its
output, wall time and counts, and the totals the funnel of each night is the difference of.
ROOT/_night.html is the page: this night's funnel, the funnels of all nights, each step's wall time and
review page.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from dataclasses import dataclass

from jobs import report, runner
from operators import config as config_mod
from operators.ledger import Ledger, output_fs

JOBS = ("dedup", "caption", "transcribe", "aqa", "rewrite", "quality", "export")
RECORD = "_night.json"
# What each step's summary adds to the night's record: totals over its output, so a night's share of them
# is this night's totals less the night before's.
TOTALS = ("rows_out", "output_rows", "rows_ok", "rows_error", "rows_kept", "duplicates", "contaminated",
          "rows_exported")


@dataclass
class Step:
    name: str
    kind: str  # the job module's name
    job: runner.Job
    cfg: config_mod.JobCfg


def by_step(overrides: list[str], names: list[str]) -> dict[str, list[str]]:
    """`caption.sampling.max_tokens=64` -> {"caption": ["sampling.max_tokens=64"]}."""
    out: dict[str, list[str]] = {n: [] for n in names}
    for item in overrides:
        step, dot, rest = item.partition(".")
        if not dot or step not in out:
            raise config_mod.ConfigError(f"override {item!r}: begin it with the name of a step ({', '.join(names)}), "
                                         "e.g. caption.sampling.max_tokens=64")
        out[step].append(rest)
    return out


def plan(night: config_mod.NightCfg, root: str, first_input, overrides: list[str], fresh: bool = False) -> list[Step]:
    """Every step's job and validated config, or a ConfigError naming the step and key (an output holding rows
    of another config too, unless --fresh clears it); nothing runs."""
    changes = by_step(overrides, [s.name for s in night.steps])
    steps: list[Step] = []
    for i, s in enumerate(night.steps):
        try:
            if s.job not in JOBS:
                raise config_mod.ConfigError(f"job: unknown job {s.job!r}; known: {', '.join(JOBS)}")
            job = importlib.import_module(f"jobs.{s.job}").JOB
            upstream = next((p for p in steps if p.name == s.input), steps[-1]) if steps else None
            source = (first_input if upstream is None else
                      "/".join(x for x in (upstream.cfg.output.rstrip("/"), upstream.job.feeds) if x))
            mine = [f"{k}={json.dumps(v)}" for k, v in s.overrides.items()] + changes[s.name]
            # Later steps read what earlier ones will write: their input is not there yet on a first night.
            cfg = config_mod.load(s.config, mine, input=source, output=f"{root.rstrip('/')}/{s.name}",
                                  check_input=i == 0)
            runner.check(cfg, job)
            if job.verify:  # against what the steps before will write: the answers they ask, the manifest's columns
                asker = upstream
                while asker is not None and not asker.job.generates:
                    asker = next((p for p in steps if p.name == asker.cfg.input.rstrip("/").rsplit("/", 1)[-1]), None)
                job.verify(cfg, list(config_mod.prompts(asker.cfg)) if asker else None, columns(first_input))
            if not fresh:
                runner.refuse(cfg, job, Ledger(cfg.output))
        except config_mod.ConfigError as e:
            raise config_mod.ConfigError(f"step {s.name}: {e}") from None
        steps.append(Step(s.name, s.job, job, cfg))
    return steps


def columns(spec, rows: int = 100) -> set[str] | None:
    """The columns of the night's first manifest (a parquet schema's, or the keys of a jsonl's first rows)."""
    import fsspec
    import pyarrow.parquet as pq

    from operators import read

    try:
        manifests = read.expand(spec) if spec else []
    except (OSError, ValueError):
        return None
    if not manifests:
        return None
    with fsspec.open(manifests[0], "rb") as f:
        if read.format_of(manifests[0]) == "parquet":
            return set(pq.read_schema(f).names)
        keys: set[str] = set()
        for _, line in zip(range(rows), f):
            try:
                keys |= set(json.loads(line))
            except (ValueError, TypeError):
                continue
        return keys


class Record:
    """ROOT/_night.json: {"nights": [entry, ...]}, one entry per night, written after every step."""

    def __init__(self, root: str):
        self.fs, self.root = output_fs(root)
        path = f"{self.root}/{RECORD}"
        self.nights: list[dict] = []
        if self.fs.exists(path):
            with self.fs.open(path, "r") as f:
                self.nights = json.load(f)["nights"]
        if self.nights and self.nights[-1]["status"] != "ok":
            self.entry = self.nights[-1]  # the rerun of a failed (or killed) night goes on with it
            self.entry["attempts"] += 1
        else:
            self.entry = {"night": len(self.nights) + 1, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "status": "running", "attempts": 1, "wall_s": 0.0, "steps": []}
            self.nights.append(self.entry)

    def step(self, step: Step, summary: dict | None, wall: float, status: str) -> None:
        """A step's wall time (summed over the night's attempts) and its output's totals; saved at once, so a
        night killed later still has it."""
        old = next((x for x in self.entry["steps"] if x["name"] == step.name), None)
        if old is None:
            old = {"name": step.name, "job": step.kind, "output": step.cfg.output, "wall_s": 0.0, "totals": {}}
            self.entry["steps"].append(old)
        old["wall_s"] = round(old["wall_s"] + wall, 2)
        old["status"] = status
        if summary is not None:
            old["totals"] = {k: summary[k] for k in TOTALS if k in summary}
        self.entry["wall_s"] = round(sum(x["wall_s"] for x in self.entry["steps"]), 2)
        self.save()

    def save(self) -> None:
        funnels = [funnel(n, self.nights[k - 1] if k else None) for k, n in enumerate(self.nights)]
        with self.fs.open(f"{self.root}/{RECORD}", "w") as f:
            json.dump({"nights": self.nights}, f, indent=2)
        with self.fs.open(f"{self.root}/{report.NIGHT_PAGE}", "w") as f:
            f.write(report.night_page(self.root, self.nights, funnels))

    def close(self, status: str) -> None:
        self.entry["status"] = status
        self.save()


def new(step: dict, before: dict | None, key: str) -> int:
    """This night's share of a step's total: the total less the night before's."""
    was = next((x["totals"] for x in (before or {}).get("steps", []) if x["name"] == step["name"]), {})
    return step["totals"].get(key, 0) - was.get(key, 0)


def funnel(entry: dict, before: dict | None) -> list[tuple[str, int]]:
    """This night's rows through the steps: (stage, rows), from the step totals less the night before's."""
    out: list[tuple[str, int]] = []
    for k, s in enumerate(entry["steps"]):
        if k == 0:
            out.append(("rows in", new(s, before, "rows_out")))
        if s["job"] == "dedup":
            out += [("unique", new(s, before, "output_rows") - new(s, before, "rows_error") - new(s, before, "duplicates")),
                    ("kept", new(s, before, "rows_kept"))]
        elif s["job"] == "export":
            out.append((f"{s['name']}: exported", new(s, before, "rows_exported")))
        elif s["job"] == "quality":
            out.append((f"{s['name']}: kept by quality", new(s, before, "rows_kept")))
        else:
            out.append((f"{s['name']}: generated", new(s, before, "rows_ok")))
    return out


def run(steps: list[Step], root: str, fresh: bool) -> int:
    if fresh:
        runner.prepare_output(root, True)
    record = Record(root)
    for step in steps:
        t0, summary = time.time(), None
        print(f"night: step {step.name} ({step.kind}): {step.cfg.input} -> {step.cfg.output}", flush=True)
        try:
            summary = step.job.start(step.cfg)
            runner.report(summary, step.cfg.output)
            failure = runner.verdict(summary, step.cfg)
        except config_mod.ConfigError as e:
            failure, code = f"config error: step {step.name}: {e}", 2
        except runner.STOPS as e:  # said in full by their message: no traceback
            failure, code = f"night: step {step.name} failed: {type(e).__name__.lower()}: {e}", 1
        except Exception as e:  # noqa: BLE001 - whatever stops a step stops the night, said in one line
            traceback.print_exc()
            failure, code = f"night: step {step.name} failed: {type(e).__name__}: {e}", 1
        else:
            code = 1
            failure = failure and f"night: step {step.name} failed: {failure}"
        record.step(step, summary, time.time() - t0, "failed" if failure else "ok")
        if failure:
            record.close("failed")
            print(f"{failure} (the same command goes on from this step)", file=sys.stderr)
            return code
    record.close("ok")
    nights = record.nights
    stages = funnel(nights[-1], nights[-2] if len(nights) > 1 else None)
    print(f"night {record.entry['night']}: {len(steps)} steps, {record.entry['wall_s']:.1f} s; "
          + " -> ".join(f"{name} {n}" for name, n in stages))
    print(f"night page: {root.rstrip('/')}/{report.NIGHT_PAGE}")
    return 0


def dry_run(steps: list[Step]) -> int:
    """The first step's dry run (its input exists); the later steps' plans (theirs is made by the night)."""
    code = steps[0].job.check_run(steps[0].cfg)
    for step in steps[1:]:
        problem = runner.model_problem(step.cfg.model.path) if step.job.generates else None
        print(f"  step {step.name} ({step.kind}): {step.cfg.input} -> {step.cfg.output}"
              + (f"; model {step.cfg.model.path}: {'resolves' if not problem else problem}" if step.job.generates else ""))
        code = max(code, 2 if problem else 0)
    return code


def main(argv: list[str] | None = None) -> int:
    runner.as_driver()
    args = runner.parse_args(argv, __doc__)
    try:
        night = config_mod.load_night(args.config)
        root = args.output or night.output
        if not root:
            raise config_mod.ConfigError("output: give the night's root folder (--output ROOT or `output:` in the recipe)")
        steps = plan(night, root, args.input or night.input, args.overrides, args.fresh)
    except runner.STOPS as e:
        return runner.stop(e)
    return dry_run(steps) if args.dry_run else run(steps, root, args.fresh)


if __name__ == "__main__":
    sys.exit(main())
