"""Deduplicate raw audio and keep evaluation sets out, before any GPU time is spent. CPU only.

    python -m jobs.dedup --config configs/dedup.yaml --input <manifests> --output <folder> [--fresh] [key=value ...]

1. Identities: every input row (and first every row of `dedup.exclude`, the evaluation sets) is fetched and
   decoded by the decode actors, which compute its exact hash and perceptual fingerprint
   (operators/fingerprint.py). Committed under `_identity/` (and `_exclude/`), resumable like every job;
   bad audio becomes an error row.
2. Clusters: operators/cluster.py finds the copies on Ray (buckets grouped by Ray Data, copies verified in
   each bucket) and closes them into clusters; each keeps its row with the lowest `id`.
3. The output: one row per input row with its columns, `audio_hash`, `fingerprint`, `duplicate_of`,
   `contaminated_by`, `keep`, `error`; and `kept/`, a manifest of the kept rows with the input's own
   columns, which jobs.caption, jobs.aqa and jobs.transcribe take as `--input` as it is.
"""
from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.compute as pc

from jobs import runner
from operators import cluster, decode
from operators import config as config_mod
from operators import ledger as ledger_mod
from operators.models import ModelSpec
from operators.stage import put

IDENTITY, EXCLUDE, KEPT = "_identity", "_exclude", "kept"
# What this job adds to a row: the kept manifest carries the input's columns only.
ADDED = {"output_id", "prompt_id", "prompts", "error", "warning", "model", "prompt", "duration_s", "segment",
         "segments", "segment_start_s", "segment_end_s", "speech_s", "sampling", "run_id", "created_at",
         "source_manifest", "source_row", "audio_hash", "fingerprint", "signature", "active_s", "duplicate_of",
         "contaminated_by", "keep", "input_part", "input_row"}


def label(batch: pa.Table) -> pa.Table:
    """One identity per input row: the ledger's unit is the row (prompt "identity", one window)."""
    n = batch.num_rows
    return put(batch, prompt_id=pa.array(["identity"] * n, pa.string()), prompts=pa.array([1] * n, pa.int32()))


def identities(ds, cfg, spec, prompts, column):
    # One window as long as any clip may be: the whole clip is fingerprinted, never windowed.
    spec = ModelSpec(sample_rate=16_000, window_s=cfg.decode.max_duration_s)
    return decode.apply(ds, cfg, spec, identity=True).map_batches(label, batch_format="pyarrow", num_cpus=0)


def marked(ds, cfg, spec, prompts, column, assignment):
    # The assignment holds only rows in clusters of two or more: one small table shipped with the tasks.
    return ds.map_batches(cluster.mark, fn_kwargs={"assignment": assignment}, batch_format="pyarrow", num_cpus=0)


IDENTIFY = runner.Job("audio_hash", identities, generates=False, checks=False)
MARK = runner.Job("duplicate_of", marked, derived=True, generates=False, checks=False)


def kept(batch: pa.Table) -> pa.Table:
    rows = batch.filter(pc.fill_null(batch["keep"], False))
    return rows.select([c for c in rows.column_names if c not in ADDED])


def write_kept(output: str) -> str:
    """kept/: the kept rows as manifest parquet (id, audio and the input's other columns)."""
    import pyarrow.fs as pafs
    import ray
    from ray.data.datasource import FilenameProvider

    class Parts(FilenameProvider):  # named as parts, so that `--input <output>/kept` lists them
        def get_filename_for_task(self, write_uuid, task_index):
            return f"{ledger_mod.PART}kept-{write_uuid}-{task_index:06d}.parquet"

    fs, root = ledger_mod.output_fs(output)
    target = f"{root}/{KEPT}"
    if fs.exists(target):
        fs.rm(target, recursive=True)
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    files = sorted(fs.glob(f"{root}/{ledger_mod.PART}*.parquet"))
    ray.data.read_parquet(files, filesystem=filesystem).map_batches(kept, batch_format="pyarrow").write_parquet(
        target, filesystem=filesystem, filename_provider=Parts())
    return target


def dedup(cfg, fresh: bool = False) -> dict:
    import pyarrow.fs as pafs

    base = cfg.output.rstrip("/")
    if fresh:
        runner.prepare_output(base, True)
    changed = 0
    if cfg.dedup.exclude:
        changed += runner.run(cfg.model_copy(update={"input": cfg.dedup.exclude, "output": f"{base}/{EXCLUDE}"}),
                              IDENTIFY)["output_rows_this_run"]
    changed += runner.run(cfg.model_copy(update={"output": f"{base}/{IDENTITY}"}), IDENTIFY)["output_rows_this_run"]
    fs, root = ledger_mod.output_fs(base)
    parts = {side: sorted(fs.glob(f"{root}/{side}/{ledger_mod.PART}*.parquet")) for side in (IDENTITY, EXCLUDE)}
    found = cluster.edges(parts[IDENTITY], parts[EXCLUDE], cfg, pafs.PyFileSystem(pafs.FSSpecHandler(fs)))
    assignment = cluster.assign(found)
    # New identities may change any cluster: then the marked rows are written again, else resumed.
    summary = runner.run(cfg.model_copy(update={"input": f"{base}/{IDENTITY}", "output": base}), MARK,
                         fresh=bool(changed), keep=(IDENTITY, EXCLUDE), build_args={"assignment": assignment})
    write_kept(base)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = runner.parse_args(argv, __doc__)
    try:
        cfg = config_mod.load(args.config, args.overrides, input=args.input, output=args.output)
        if args.dry_run:
            return runner.dry_run(cfg.model_copy(update={"output": f"{cfg.output.rstrip('/')}/{IDENTITY}"}), IDENTIFY)
        summary = dedup(cfg, fresh=args.fresh)
    except config_mod.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    runner.report(summary, cfg.output)
    print(f"dedup: {summary.get('clusters', 0)} clusters, {summary.get('duplicates', 0)} duplicates, "
          f"{summary.get('contaminated', 0)} contaminated, {summary.get('rows_kept', 0)} kept of "
          f"{summary['output_rows']}; manifest of the kept rows: {cfg.output.rstrip('/')}/{KEPT}")
    failure = runner.verdict(summary, cfg)
    if failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
