"""Deduplicate raw audio and keep evaluation sets out, before any GPU time is spent. CPU only.

    python -m jobs.dedup --config configs/dedup.yaml --input <manifests> --output <folder> [--fresh] [key=value ...]

1. Identities: every input row (and first every row of `dedup.exclude`, the evaluation sets) is fetched and
   decoded by the identity actors (operators/identity.py), which compute its exact hash and perceptual
   fingerprint (operators/fingerprint.py). Committed under `_identity/` (and `_exclude/`), resumable like every job;
   bad audio becomes an error row.
2. Clusters: operators/copies.py finds the copies on Ray (buckets grouped by Ray Data, copies verified in
   each bucket) between the new identities and all (earlier runs' too: only the buckets that hold a new row are
   compared) and closes them into clusters; each keeps the row an earlier run kept, or else its row with the
   lowest `id`.
3. The output: one row per input row with its columns, `audio_hash`, `fingerprint`, `duplicate_of`,
   `contaminated_by`, `keep`, `error`; and `kept/`, a manifest of the kept rows with the input's own
   columns, which jobs.caption, jobs.aqa and jobs.transcribe take as `--input` as it is.

Over a grown corpus (the next night) each pass does only what is new: new rows' identities, their marks,
and one `kept/` part per new marked part. Nothing committed is rewritten, so the next jobs, reading `kept/`,
see only new parts. A new evaluation set in `dedup.exclude` marks new rows; rows marked before are not
rewritten, and the log says how many of them copy it (`--fresh` marks everything again).
"""
from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.compute as pc

from jobs import runner
from operators import copies, identity, read, write
from operators import ledger as ledger_mod
from operators.stage import LIGHT_CPUS, Columns, declared, put

IDENTITY, EXCLUDE, KEPT = "_identity", "_exclude", "kept"
# The identity parts whose every row is marked: the next run compares only the parts after them with all.
# An index, not a record: without it every identity is compared again (slower, the same marks).
MARKED_PARTS = "_marked_parts.json"
LABEL = Columns(writes=("prompt_id", "prompts"))  # `label`'s
# What this job adds to a row (its parts' declarations, and where the mark pass read the row): the kept manifest
# carries the input's columns only.
ADDED = {*declared("writes", read.COLUMNS, identity.Identify, LABEL, copies.COLUMNS, write.COLUMNS), *ledger_mod.INPUT}


def label(batch: pa.Table) -> pa.Table:
    """One identity per input row: the ledger's unit is the row (prompt "identity", one window)."""
    n = batch.num_rows
    return put(batch, prompt_id=pa.array(["identity"] * n, pa.string()), prompts=pa.array([1] * n, pa.int32()))


def identities(ds, cfg, spec, prompts, column):
    return identity.apply(ds, cfg).map_batches(label, batch_format="pyarrow", num_cpus=0)


def marked(ds, cfg, spec, prompts, column, assignment):
    # The assignment holds only rows in clusters of two or more: one small table shipped with the tasks.
    return ds.map_batches(copies.mark, fn_kwargs={"assignment": assignment}, batch_format="pyarrow", num_cpus=0)


IDENTIFY = runner.Job("audio_hash", identities, generates=False, checks=False, determines=("dedup",), reviewed=False)


def kept(batch: pa.Table) -> pa.Table:
    rows = batch.filter(pc.fill_null(batch["keep"], False))
    return rows.select([c for c in rows.column_names if c not in ADDED])


def keep_part(part: str, target: str) -> None:
    """One marked part's kept rows as a manifest part of the same name (none kept: an empty part, which
    says the marked part is done)."""
    import pyarrow.parquet as pq

    from operators.write import commit

    fs, _ = ledger_mod.output_fs(part)
    with fs.open(part, "rb") as f:
        table = kept(pq.read_table(f))
    commit(table, target, f"{ledger_mod.PART}kept-{part.rsplit('/', 1)[-1][len(ledger_mod.PART):]}")


def uri(output: str, path: str) -> str:
    """A path of the output's filesystem (as fsspec lists it, without the protocol) as a URI."""
    return output.split("://", 1)[0] + "://" + path if "://" in output else path


def keep_parts(progress: pa.Table, output: str) -> pa.Table:
    """Ray Data UDF after the marks' commits: the kept part of each marked part, in the same pass."""
    for part in progress["file"].to_pylist():
        keep_part(uri(output, part), f"{output.rstrip('/')}/{KEPT}")
    return progress


def write_kept(output: str) -> str:
    """kept/: the kept rows as manifest parquet (id, audio and the input's other columns), one part per marked
    part, written once: a part committed on an earlier night is never rewritten. The mark pass writes them
    (`keep_parts`); here, as Ray tasks, only those a run stopped between the two commits left out."""
    import ray

    fs, root = ledger_mod.output_fs(output)
    target = f"{root}/{KEPT}"
    have = {p.rsplit("/", 1)[-1] for p in fs.glob(f"{target}/{ledger_mod.PART}*.parquet")}
    todo = [uri(output, p) for p in sorted(fs.glob(f"{root}/{ledger_mod.PART}*.parquet"))
            if f"{ledger_mod.PART}kept-{p.rsplit('/', 1)[-1][len(ledger_mod.PART):]}" not in have]
    if todo:
        task = ray.remote(num_cpus=LIGHT_CPUS)(keep_part)
        ray.get([task.remote(p, f"{output.rstrip('/')}/{KEPT}") for p in todo])
    return target


def dedup(cfg, fresh: bool = False) -> dict:
    import pyarrow.fs as pafs

    base = cfg.output.rstrip("/")
    if fresh:
        runner.prepare_output(base, True)
    new_evaluation = 0
    if cfg.dedup.exclude:
        new_evaluation = runner.run(cfg.model_copy(update={"input": cfg.dedup.exclude, "output": f"{base}/{EXCLUDE}"}),
                                    IDENTIFY)["output_rows_this_run"]
    runner.run(cfg.model_copy(update={"output": f"{base}/{IDENTITY}"}), IDENTIFY)
    fs, root = ledger_mod.output_fs(base)
    parts = {side: sorted(fs.glob(f"{root}/{side}/{ledger_mod.PART}*.parquet".replace("//", "/")))
             for side in (IDENTITY, EXCLUDE, "")}  # "": the rows marked on earlier runs
    index = f"{root}/{MARKED_PARTS}"
    marked: set[str] = set()
    if fs.exists(index):
        with fs.open(index, "r") as f:
            marked = set(json.load(f))
    old = [p for p in parts[IDENTITY] if p.rsplit("/", 1)[-1] in marked]
    new = [p for p in parts[IDENTITY] if p.rsplit("/", 1)[-1] not in marked]
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    found = copies.edges(new, old, parts[EXCLUDE], cfg, filesystem)
    before = copies.earlier(parts[""], found, filesystem)
    assignment = copies.assign(found, before)
    if new_evaluation and before.num_rows:
        print(f"dedup: dedup.exclude has {new_evaluation} new evaluation rows; {copies.remarked(assignment, before)} "
              "rows marked on earlier runs copy them and are not re-marked (their rows stay as committed; --fresh "
              "marks every row again)", flush=True)
    # Marks resume like any derived job: only identity rows not marked yet are marked now.
    summary = runner.run(cfg.model_copy(update={"input": uri(base, f"{root}/{IDENTITY}"), "output": base}), JOB,
                         build_args={"assignment": assignment})
    if summary["rows_out"] == summary["rows_in"]:  # every identity part marked whole: the next run compares
        with fs.open(index, "w") as f:             # only what comes after them
            json.dump(sorted(p.rsplit("/", 1)[-1] for p in parts[IDENTITY]), f)
    write_kept(base)
    return {**summary, "feeds": KEPT}


def dry_run(cfg) -> int:
    """The identity pass's dry run: what would be fetched and fingerprinted."""
    return runner.dry_run(cfg.model_copy(update={"output": f"{cfg.output.rstrip('/')}/{IDENTITY}"}), IDENTIFY)


JOB = runner.Job("duplicate_of", marked, derived=True, generates=False, checks=False, determines=("dedup",),
                 runs=dedup, dry=dry_run, feeds=KEPT, after_commit=keep_parts)


if __name__ == "__main__":
    sys.exit(runner.main(JOB, __doc__))
