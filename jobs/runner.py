"""The one runner every job uses: parse the command line, validate the config, run on Ray, report.

    python -m jobs.<job> --config configs/<job>.yaml [--input URI] [--output URI] [--fresh] [key=value ...]

A job module supplies a `Job`: the stages between reading manifests and writing parquet, the name of
its output column, and whether rows bring their own conversation. A rerun with the same output resumes: input rows already committed
there are skipped. `--fresh` deletes the output first.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from jobs import report as report_mod
from jobs.progress import Progress, Stalled
from operators import config as config_mod
from operators import ledger as ledger_mod
from operators import quality, read, score, write
from operators.stage import LIGHT_CPUS
from operators.storage import StorageFailure


GENERATED = ("model", "prompt", "sampling", "decode", "quality", "score")  # what makes a generated row


@dataclass(frozen=True)
class Job:
    # The output column: caption, text, answer; None: the one the input output has; a callable: (cfg) -> column.
    column: str | None | Callable
    build: Callable  # (ds, cfg, spec, prompts) -> ds: the stages between read and the checks
    conversations: bool = False  # rows bring a conversation to answer (question answering)
    derived: bool = False  # reads another job's output: one row out per row in, its columns kept
    generates: bool = True  # runs an engine: needs `model` and a prompt
    checks: bool = True  # its rows have text for the quality and score stages
    split_by: str | None = None  # commit one file per value of this column (export: the dataset split)
    # (cfg, ledger, column, written) -> dict | None: what the job writes from its committed output at the end
    # of a run, before the summary (the stitched transcripts, a dataset card); what it returns joins the summary.
    finish: Callable | None = None
    # The config key groups that determine its rows (operators/config.py `determining`): an output made with
    # other values of them is refused, so that one output never mixes two configs.
    determines: tuple[str, ...] = GENERATED
    # A job that is several runs of this runner (dedup): (cfg, fresh) -> summary, run instead of `run`.
    runs: Callable | None = None
    # ... and its dry run: (cfg) -> exit code, instead of `dry_run`.
    dry: Callable | None = None
    # The folder in its output that a next job reads (dedup: `kept`); "" for the output itself.
    feeds: str = ""
    # Ray Data UDF (progress batch, output) -> progress batch, run on each batch of parts just committed, in the
    # same pass: what the job derives from its parts one by one (dedup: the kept manifest's part of each).
    after_commit: Callable | None = None
    # Writes a review page: not a pass inside a job (dedup's identities), whose job's own page is the one read.
    reviewed: bool = True
    # Gathers another job's rows by clip window into new rows (rewrite): read as a derived job reads, written as
    # new rows, each listing the rows it was made from.
    gathers: bool = False
    # Scores its own rows with CLAP (a rewrite's acceptance test): the runner's score stage does not run again.
    scored: bool = False
    # (cfg, prompt ids, columns) -> None: the job's config against what its input holds (the answers and columns a
    # rewrite's template names); raises ConfigError. None for either: not known yet.
    verify: Callable | None = None

    def start(self, cfg, fresh: bool = False) -> dict:
        return self.runs(cfg, fresh) if self.runs else run(cfg, self, fresh)

    def check_run(self, cfg) -> int:
        return self.dry(cfg) if self.dry else dry_run(cfg, self)


TEXT_COLUMNS = ("caption", "text", "answer")  # what the generating jobs write; derived jobs find theirs


def check(cfg, job: Job) -> dict:
    """What only the job can tell about its config; the prompts it asks. Raises ConfigError."""
    if not job.generates:
        return {}
    if cfg.model is None:
        raise config_mod.ConfigError("model: required for this job; give model.family and model.path, e.g. "
                                     "model.family=qwen2-audio model.path=Qwen/Qwen2-Audio-7B-Instruct")
    spec = config_mod.model_spec(cfg)
    if job.gathers:
        if cfg.rewrite is None:
            raise config_mod.ConfigError("rewrite: required for this job; give rewrite.template, e.g. "
                                         "rewrite.template='Rewrite as one caption: {answers}'")
        return {}
    if not spec.audio:
        raise config_mod.ConfigError(f"model.family: {cfg.model.family!r} is a text model and cannot listen; give an "
                                     "audio-language model (it rewrites answers in jobs.rewrite)")
    prompts = config_mod.prompts(cfg)
    if not prompts and not job.conversations:
        raise config_mod.ConfigError("prompt.use: name at least one prompt of the library (prompt.library), "
                                     "e.g. prompt.use=[caption]")
    if job.conversations and spec.prompt_format != "chat":
        raise config_mod.ConfigError(f"model.family: {cfg.model.family!r} takes no conversation (its prompt is "
                                     "fixed); answer questions with a chat model such as qwen2-audio")
    return prompts


def as_driver() -> None:
    """This process runs as a job's driver, before Ray's first import:
    - each line it prints reaches its log in one write. Unbuffered (PYTHONUNBUFFERED: `ray job submit` sets it),
      print() writes a line and its newline apart, and a line Ray logs meanwhile from another thread into the same
      file lands between them: a progress event was seen glued to Ray Data's next log line. Line-buffered, a line
      still goes out the moment it ends.
    - it never connects to Ray but through start_ray. Once Ray is shut down at exit (after a stall, say), Ray
      Data's executor thread still runs, and its next Ray call would connect again on its own: seen joining the
      cluster as a new job, and where no cluster is named it would start a local instance."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"  # read once, when ray is first imported


def parse_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config, e.g. configs/caption.yaml")
    ap.add_argument("--input", help="manifest path, glob or URI (overrides `input`)")
    ap.add_argument("--output", help="output folder or URI (overrides `output`)")
    ap.add_argument("--fresh", action="store_true",
                    help="delete what the output folder holds and start over (default: resume)")
    ap.add_argument("--dry-run", action="store_true",
                    help="check everything and print the plan, without running the work (exit 0: it would start)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sampling.max_tokens=128")
    return ap.parse_intermixed_args(argv)  # overrides may come before or after the options


def prepare_output(output: str, fresh: bool, keep: tuple[str, ...] = ()) -> None:
    """Clear the output for --fresh (all but the subfolders named in `keep`); otherwise only the markers of a
    finished run, which this run rewrites."""
    fs, root = ledger_mod.output_fs(output)
    if not fs.exists(root):
        return
    if fresh:
        for info in fs.ls(root, detail=True):
            if info["name"].rstrip("/").rsplit("/", 1)[-1] not in keep:
                fs.rm(info["name"], recursive=True)
        return
    for name in (ledger_mod.SUCCESS, ledger_mod.SUMMARY):
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}")


def open_output(cfg, job: Job, fresh: bool = False, keep: tuple[str, ...] = ()):
    """The output's ledger, read once (after --fresh cleared the output). Refused with a ConfigError, before
    anything in it changes, when its committed rows were made with other values of what determines them."""
    if fresh:
        prepare_output(cfg.output, True, keep)
    ledger = ledger_mod.Ledger(cfg.output).update()  # the one read of what is committed
    refuse(cfg, job, ledger)
    return ledger


def refuse(cfg, job: Job, ledger) -> None:
    """ConfigError when the output's committed rows were made with other values of what determines the job's."""
    why = ledger.refusal(config_mod.determining(cfg, job.determines))
    if why:
        raise config_mod.ConfigError(f"{why}; rows of two configs must not mix in one output: start over with "
                                     "--fresh, or write to another --output")


def start_ray(cfg) -> None:
    import ray

    env = config_mod.storage_env(cfg)
    # A cluster only when RAY_ADDRESS names one (`ray job submit` sets it; `RAY_ADDRESS=auto` joins the
    # node's cluster). Otherwise a fresh local instance: never a stale cluster a crashed `ray start` left.
    address = os.environ.get("RAY_ADDRESS", "local")
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": env} if env else None, **(LOCAL if address == "local" else {}))


# A local instance keeps as many idle workers as light tasks can run at once. Ray keeps one per CPU and stops
# the rest after a second idle, so on a small box every pass of a job (a night has many) started and imported
# its worker processes again: seconds each, more than the pass's work.
LOCAL = {"_system_config": {"num_workers_soft_limit": int((os.cpu_count() or 1) / LIGHT_CPUS)}}


def planned(cfg, manifests: list[str], ledger) -> tuple:
    """(read chunks, rows in, rows per chunk, rows already committed) of this run."""
    import ray

    done = ledger.done()
    # Chunks never smaller than a batch of any stage, so that small runs still commit in small steps.
    grain = min(cfg.decode.batch_size, cfg.engine.batch_size, cfg.write.rows_per_file)
    blocks = int(cfg.read.blocks_per_cpu * ray.cluster_resources().get("CPU", 1))
    chunks, rows_in, chunk_rows = read.plan(manifests, grain, blocks, cfg.read.max_chunk_rows, done)
    return chunks, rows_in, chunk_rows, int(sum(len(rows) for rows in done.values()))


def begin(cfg, job: Job, fresh: bool = False, keep: tuple[str, ...] = ()) -> tuple:
    """What a run and its dry run both check before Ray starts, in order: the job's own checks of its config,
    the manifests, the text column, the job's config against what its input holds, and the output's ledger (read
    once; a rerun with another config refused; --fresh clears it first). Returns (prompts, manifests, column,
    ledger)."""
    prompts = check(cfg, job)
    manifests = read.expand(cfg.input)
    column = job.column(cfg) if callable(job.column) else job.column or text_column(manifests)
    if job.verify:
        job.verify(cfg, *held(cfg.input, manifests))
    return prompts, manifests, column, open_output(cfg, job, fresh, keep)


def run(cfg, job: Job, fresh: bool = False, keep: tuple[str, ...] = (), build_args: dict | None = None) -> dict:
    """Run one job to completion (or resume it) and return its summary. `keep`: subfolders --fresh spares;
    `build_args`: passed to the job's build (what a job computed before this run, e.g. clusters)."""
    import ray

    prompts, manifests, column, ledger = begin(cfg, job, fresh, keep)
    rules = config_mod.quality_rules(cfg)
    spec = config_mod.model_spec(cfg) if job.generates else None
    prepare_output(cfg.output, False)  # the markers of a finished run, which this run rewrites
    ledger.record(config_mod.determining(cfg, job.determines))
    run_id, started = uuid.uuid4().hex[:12], write.utcnow()
    start_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    t0 = time.time()
    chunks, rows_in, chunk_rows, resumed = planned(cfg, manifests, ledger)
    print(f"plan: {rows_in} rows in, {resumed} already committed, {rows_in - resumed} to do in "
          f"{chunks.num_rows} read tasks of up to {chunk_rows} rows", flush=True)
    written, stages = 0, {}
    if chunks.num_rows:  # else all is committed: no engine to start
        ds = job.build(read.read(chunks, min(cfg.read.concurrency, chunks.num_rows), derived=job.derived), cfg,
                       spec, prompts, column=column, **(build_args or {}))
        # A gathering job's window leaves its engine as several rows (rewrite.diverse) in one block: the stages
        # after it keep blocks whole, so that one commit holds all of a window's rows.
        whole = job.gathers
        if job.checks:
            ds = checks(ds, cfg, column, spec.sample_rate if spec else None, rules, scored=job.scored, whole=whole)
        ds = write.apply(ds, cfg, column, run_id, started, audio_list=job.conversations,
                         committed=None if job.derived else ledger.partial(), derived=job.derived and not job.gathers,
                         split_by=job.split_by, whole=whole)
        if job.after_commit:
            ds = ds.map_batches(job.after_commit, fn_kwargs={"output": cfg.output}, batch_format="pyarrow", num_cpus=0)
        tracker = Progress(rows_in, resumed, cfg.progress.every_s, cfg.output)
        try:
            for _ in tracker.watch(ds.iter_batches(batch_format="pyarrow", batch_size=None), cfg.run.stall_s):
                pass
        except Stalled as e:
            raise Stalled(f"{e}: {waiting(cfg, job)}; the committed rows are kept and the same command resumes") from None
        finally:
            tracker.stop()
        written = tracker.output_rows
        stages = stage_times(ds)
    ledger.update()  # reads only the parts this run committed
    finished = job.finish(cfg, ledger, column, written) if job.finish is not None else None
    wall = time.time() - t0
    summary = {"rows_in": rows_in, **ledger.counts(run_id), "run_id": run_id, "column": column,
               "model": cfg.model.path if cfg.model else None, "prompts": list(prompts) or ledger.prompt_ids,
               "started_at": t0,
               "rows_resumed": resumed, "output_rows_this_run": int(written), "wall_s": round(wall, 2),
               "output_rows_per_s": round(written / wall, 3), "stages": stages, **(finished or {})}
    # This run's tokens only: a resume's earlier rows took no time now.
    summary["output_tokens_per_s"] = round(summary.pop("output_tokens_this_run") / wall, 2)
    ledger.write_summary(summary)
    if job.reviewed:
        report_mod.draw(ledger, summary)
    ledger.mark_success()
    return summary


def waiting(cfg, job: Job) -> str:
    """What a stalled run waits for: an actor no alive node can host (resources lost and not replaced), this
    job's actors not ready (waiting for a node, starting, restarting), or, every actor ready, the tasks that
    have not finished (a stage that stopped moving)."""
    import collections

    import ray
    from ray.util.state import list_actors, list_tasks
    from ray.util.state.exception import ServerUnavailable

    needs = [("the decode actors", {"CPU": cfg.decode.num_cpus})]
    if job.generates:
        needs.append(("the engine", {"GPU": cfg.engine.num_gpus, "CPU": cfg.engine.num_cpus}))
    if cfg.score.enabled:
        needs.append(("the CLAP scorer", {"GPU": cfg.score.num_gpus, "CPU": cfg.score.num_cpus}))
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for what, need in needs:
        need = {k: v for k, v in need.items() if v}
        if not any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
            return f"no node can host {what} ({', '.join(f'{v:g} {k}' for k, v in need.items())})"

    def tally(names) -> str:
        return ", ".join(f"{n} x {name}" for name, n in collections.Counter(names).most_common(6))

    ctx = ray.get_runtime_context()
    mine = [("job_id", "=", ctx.get_job_id())]
    try:
        actors = list_actors(address=ctx.gcs_address, filters=[*mine, ("state", "!=", "ALIVE"), ("state", "!=", "DEAD")],
                             raise_on_missing_output=False)
        tasks = [] if actors else list_tasks(address=ctx.gcs_address, raise_on_missing_output=False,
                                             filters=[*mine, ("state", "!=", "FINISHED"), ("state", "!=", "FAILED")])
    except ServerUnavailable:
        return "its actors' states unknown (Ray's state API answers through the dashboard, which this cluster lacks)"
    if actors:
        # An actor is PENDING_CREATION until its constructor returns (an engine's whole start): with a worker
        # process (pid) it is starting, without one no node has its resources free yet.
        return "actors not ready: " + tally(f"{a.class_name} " + ("starting" if a.state == "PENDING_CREATION" and a.pid
                                                                    else STATES.get(a.state, a.state)) for a in actors)
    return ("every actor is ready, but no stage hands rows on (a hung engine, store or node?); tasks not finished: "
            + (tally(f"{t.name} {t.state}" for t in tasks) or "none"))


# Ray's actor states short of ALIVE, as a stalled run reports them.
STATES = {"PENDING_CREATION": "waiting for a node", "DEPENDENCIES_UNREADY": "waiting for its arguments",
          "RESTARTING": "restarting"}


def checks(ds, cfg, column: str, sample_rate: int | None, rules: dict, scored: bool = False, whole: bool = False):
    """What every job does to what it wrote before committing it: CLAP scores (score.enabled, unless the job
    `scored` its rows itself), then the quality flags (quality.enabled), which also keep the best of sampling.n
    candidates. `whole`: batches are the blocks as they come (never cut)."""
    if cfg.score.enabled and not scored:
        # Rows without their audio in `waveform` (derived jobs) decode their window at CLAP's own rate.
        ds = score.apply(ds, cfg, column, sample_rate or 48_000)
    if cfg.quality.enabled:
        ds = quality.apply(ds, cfg, column, rules, whole)
    return ds


def text_column(manifests: list[str]) -> str:
    """The text column of a job output the input names (caption, text or answer)."""
    import fsspec
    import pyarrow.parquet as pq

    if not manifests:
        raise config_mod.ConfigError("input: no committed rows to read (no part files); give the output folder of a "
                                     "caption, transcribe or aqa job that has run")
    with fsspec.open(manifests[0], "rb") as f:
        names = pq.read_schema(f).names
    found = [c for c in TEXT_COLUMNS if c in names]
    if not found:
        raise config_mod.ConfigError(f"input: {manifests[0]} has none of the columns {', '.join(TEXT_COLUMNS)}; "
                                     "give the output folder of a caption, transcribe or aqa job")
    return found[0]


def held(spec, manifests: list[str]) -> tuple[list[str] | None, set[str] | None]:
    """The prompt ids (from its recorded config) and the columns (its first part's) of the job output a derived
    job reads; None where it is not one folder of such an output."""
    import json

    import fsspec
    import pyarrow.parquet as pq

    if not manifests or not isinstance(spec, str) or read.format_of(manifests[0]) != "parquet":
        return None, None
    with fsspec.open(manifests[0], "rb") as f:
        columns = set(pq.read_schema(f).names)
    fs, root = ledger_mod.output_fs(spec)
    if not fs.exists(f"{root}/{ledger_mod.CONFIG}"):
        return None, columns
    with fs.open(f"{root}/{ledger_mod.CONFIG}", "r") as f:
        record = json.load(f)
    # Recorded flat: prompt.<id>.instruction, prompt.<id>.system, and prompt.system and prompt.language.
    ids = {k.split(".")[1] for k in record if k.startswith("prompt.") and k not in ("prompt.system", "prompt.language")}
    return sorted(ids), columns


def stage_times(ds) -> dict:
    """Per stage (Ray Data operator): `span_s` from its first task's start to its last task's end,
    `busy_s`, the time its tasks ran, summed over actors, and `bytes_out`, the size of what it handed on (the
    audio travels as far as a stage that needs it); from Ray Data's own execution stats."""
    def ops(summary):  # Ray keeps each operator's stats on the dataset it made: walk the lineage
        for parent in summary.parents:
            yield from ops(parent)
        yield from summary.operators_stats

    out = {}
    for op in ops(ds.get_stats_summary()):
        name = re.sub(r"MapBatches\((\w+)\)", r"\1", op.operator_name)  # fused: "mark->write_batch"
        span = (op.latest_end_time - op.earliest_start_time
                if op.latest_end_time is not None and op.earliest_start_time is not None else None)
        out[name] = {"span_s": None if span is None else round(span, 2),
                     "busy_s": round(op.wall_time.sum, 2) if op.wall_time else None,
                     "rows_out": int(op.output_num_rows.sum) if op.output_num_rows else None,
                     "bytes_out": int(op.output_size_bytes.sum) if op.output_size_bytes else None}
    return out


def verdict(summary: dict, cfg) -> str | None:
    """Why the run must fail (rows lost or doubled, too many errors), or None."""
    if summary["rows_out"] != summary["rows_in"]:
        return f"{summary['rows_in']} rows in but {summary['rows_out']} out"
    if summary["duplicate_rows"]:
        return f"{summary['duplicate_rows']} output rows appear twice"
    n = max(summary["output_rows"], 1)
    engine = sum(v for k, v in summary["errors_by_kind"].items() if k.startswith("generate/"))
    limits = [(engine, cfg.errors.max_engine_error_pct, "engine"),
              (summary["rows_error"] - engine, cfg.errors.max_input_error_pct, "input")]
    for count, limit, what in limits:
        if limit is not None and 100 * count / n > limit:
            return (f"{100 * count / n:.1f} % of rows have {what} errors, over errors.max_{what}_error_pct="
                    f"{limit:g}")
    return None


def report(summary: dict, output: str, examples: int = 5) -> None:
    import pyarrow.parquet as pq

    print(f"rows in {summary['rows_in']}  rows out {summary['rows_out']}  ok {summary['rows_ok']}  "
          f"errors {summary['rows_error']}  resumed {summary['rows_resumed']}  "
          f"{summary['output_rows_per_s']:.2f} rows/s  wall {summary['wall_s']:.1f} s")
    for kind, n in summary["errors_by_kind"].items():
        print(f"  {kind}: {n}")
    if "rows_kept" in summary or "flags" in summary:
        said = ([f"kept {summary['rows_kept']} of {summary['output_rows']} rows"] if "rows_kept" in summary else []) + \
            ([f"{summary['rows_flagged']} flagged"] if summary.get("flags") else [])
        print(f"quality: {', '.join(said)}" + "".join(f"\n  {flag}: {n}" for flag, n in summary.get("flags", {}).items()))
    print(f"audio {summary['audio_hours'] * 3600:.1f} s  tokens in {summary['prompt_tokens']}  "
          f"out {summary['output_tokens']}  ({summary.get('output_tokens_per_s', 0):.1f}/s this run)")
    for name, t in summary["stages"].items():
        print(f"  stage {name:<14} span {t['span_s'] or 0:7.1f} s  busy {t['busy_s'] or 0:7.1f} s  "
              f"rows {t['rows_out']}" + (f"  {t['bytes_out'] / t['rows_out'] / 1e3:.1f} kB/row"
                                         if t.get("bytes_out") and t["rows_out"] else ""))
    if "clusters" in summary:
        print(f"dedup: {summary['clusters']} clusters, {summary['duplicates']} duplicates, "
              f"{summary['contaminated']} contaminated, {summary.get('rows_kept', 0)} kept of "
              f"{summary['output_rows']}; manifest of the kept rows: {output.rstrip('/')}/{summary.get('feeds', '')}")
    print(f"output: {output}  (review page: {report_mod.PAGE}, summary: {ledger_mod.SUMMARY})")
    fs, root = ledger_mod.output_fs(output)
    files = sorted(fs.glob(f"{root}/{ledger_mod.PART}*.parquet"))
    if files:  # a few rows of the first part
        with fs.open(files[0], "rb") as f:
            rows = pq.read_table(f, columns=["id", "duration_s", summary["column"], "error"]).slice(0, examples)
        for r in rows.to_pylist():
            text = r[summary["column"]] if r["error"] is None else r["error"]
            print(f"  {r['id']:<20} {r['duration_s'] or 0:6.1f}s  {str(text)[:90]}")


def model_problem(path: str) -> str | None:
    """Why `model.path` would not load, or None: a local folder needs config.json; a hub id must be cached
    or answer the hub."""
    if not config_mod.is_hub_id(path):
        return None if os.path.isfile(os.path.join(os.path.expanduser(path), "config.json")) else \
            f"model.path: {path} has no config.json; give a checkpoint folder (or a hub id)"
    from huggingface_hub import HfApi, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return None
    try:
        HfApi().model_info(path, timeout=10)
        return None
    except Exception as e:  # noqa: BLE001 - offline, unknown, gated: all stop the real run
        return f"model.path: hub id {path!r} does not resolve here ({type(e).__name__}); download it or give a folder"


SAMPLES = 3  # audio items a dry run fetches and decodes


def dry_run(cfg, job: Job) -> int:
    """Everything the real run checks before its work, and the plan; no engine starts. 0: it would start."""
    from operators.decode import DecodeError, decode

    problems = [p for p in [model_problem(cfg.model.path)] if p] if job.generates else []
    prompts, manifests, _, ledger = begin(cfg, job)
    start_ray(cfg)
    chunks, rows_in, chunk_rows, resumed = planned(cfg, manifests, ledger)
    d, e = cfg.decode, cfg.engine
    print(f"dry run: {rows_in} rows in {len(manifests)} manifests; {resumed} already committed in {cfg.output}; "
          f"{rows_in - resumed} to do in {chunks.num_rows} read tasks of up to {chunk_rows} rows")
    print("  storage: input readable, output writable (a file written and deleted)")
    print(f"  decode: {config_mod.decode_pool(cfg)} actors x {d.num_cpus:g} CPU, batches of {d.batch_size}")
    if job.generates:
        replicas = e.replicas if isinstance(e.replicas, int) else e.replicas[1]
        print(f"  engine: {e.replicas} replicas x {e.num_gpus:g} GPU (tensor parallel {e.tensor_parallel_size}) = "
              f"{replicas * e.num_gpus:g} GPUs, {e.num_cpus:g} CPU each; model {cfg.model.path} "
              f"({cfg.model.family}): {'resolves' if not problems else 'does not resolve'}; prompts "
              f"{', '.join(prompts) or 'their own conversations'}")
    if chunks.num_rows and not job.derived:
        c = chunks.slice(0, 1).to_pylist()[0]
        table = read.read_chunk(c["manifest"], c["start"], c["stop"], c["offset"], set(c["done"]))
        rate = config_mod.model_spec(cfg).sample_rate if job.generates else 16_000
        for r in (table.to_pylist()[:SAMPLES] if table is not None else []):
            if r["error"]:
                print(f"  sample {r['id']}: {r['error']}")
                continue
            try:
                clip = decode(r["audio_uris"][0], (r["audio_bytes"] or [None])[0], rate)
                print(f"  sample {r['id']}: fetched and decoded, {clip.duration:.1f} s")
                clip.close()
            except DecodeError as err:
                print(f"  sample {r['id']}: {err}")
    for p in problems:
        print(f"dry run: the run would not start: {p}", file=sys.stderr)
    return 2 if problems else 0


# What ends a command in one line, no traceback: a mistake in the configuration (exit 2), a store that keeps
# failing, a run that stopped moving (exit 1).
STOPS = (config_mod.ConfigError, StorageFailure, Stalled)


def stop(e: Exception) -> int:
    """Say in one line why the command stops; return its exit code."""
    if isinstance(e, config_mod.ConfigError):
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(f"{'storage failure' if isinstance(e, StorageFailure) else 'stalled'}: {e}", file=sys.stderr)
    return 1


def main(job: Job, doc: str, argv: list[str] | None = None) -> int:
    as_driver()
    args = parse_args(argv, doc)
    try:
        cfg = config_mod.load(args.config, args.overrides, input=args.input, output=args.output)
        if args.dry_run:
            return job.check_run(cfg)
        summary = job.start(cfg, fresh=args.fresh)  # checks the job's own config before Ray starts
    except STOPS as e:
        return stop(e)
    report(summary, cfg.output)
    failure = verdict(summary, cfg)
    if failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0
