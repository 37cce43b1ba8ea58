"""Export a job's output as a Hugging Face dataset: the kept rows, each with its own window of audio.

    python -m jobs.export --config configs/export.yaml --input <a job's output> --output <folder> [key=value ...]

The folder is what `datasets.load_dataset(<folder>)` reads as a DatasetDict: parquet shards per split
(`part-...-<split>.parquet`, at most `write.rows_per_file` rows each), and `README.md`, the dataset card,
whose YAML header names each split's files and the features (Audio at `export.sample_rate`), and whose
text gives counts, hours, models, prompts and what was left out. Rows with an error or not kept go to
`part-...-dropped.parquet`, outside the dataset. Resumable like every job.
"""
from __future__ import annotations

import json
import sys
from collections import Counter

import pyarrow as pa

from jobs.runner import Job, main
from operators import export
from operators.ledger import PART, output_fs


def build(ds, cfg, spec, prompts, column):
    return export.apply(ds, cfg)


def split_parts(ledger) -> dict[str, list]:
    """The committed parts per split, from their names (`part-...-<split>.parquet`)."""
    out: dict[str, list] = {}
    for path, part in sorted(ledger.parts.items()):
        out.setdefault(path.rsplit("-", 1)[-1].removesuffix(".parquet"), []).append(part)
    return out


def runs(parts: list) -> list[str]:
    """The ids of the runs that committed these parts (`part-<run>-<n>-<split>.parquet`)."""
    return sorted({p.path.rsplit("/", 1)[-1][len(PART):].split("-", 1)[0] for p in parts})


def card(cfg, ledger, column: str, written: int) -> dict:
    """README.md: the dataset card `datasets` reads (splits, features), with what made the dataset. Written
    whatever was kept: without a card `load_dataset` would read every parquet file, the dropped rows too."""
    import datasets
    import pyarrow.dataset as pads
    import yaml

    fs, root = output_fs(cfg.output)
    parts = split_parts(ledger)
    counts = {s: sum(p.rows for p in parts.get(s, [])) for s in cfg.export.splits}
    # With nothing kept every split is named, by a pattern no file matches yet: `load_dataset` then finds no
    # data files, where no card would hand it the dropped rows as a train split.
    splits = [s for s in cfg.export.splits if counts[s]] or list(cfg.export.splits)
    kept = [p.path for s in splits for p in parts.get(s, [])]
    if not ledger.parts:
        return {"splits": counts, "rows_exported": 0}  # an empty input: no file for `load_dataset` to read
    table = pads.dataset(kept or sorted(ledger.parts), filesystem=fs, format="parquet")
    feats = datasets.Features.from_arrow_schema(table.schema)
    used = pads.dataset(kept, filesystem=fs, format="parquet").to_table(
        columns=[c for c in ("model", "prompt_id", "prompt") if c in table.schema.names]) if kept else pa.table({})
    models = sorted(set(used["model"].drop_null().to_pylist())) if "model" in used.column_names else []
    prompts = (sorted(set(zip(used["prompt_id"].to_pylist(), used["prompt"].to_pylist())))
               if "prompt_id" in used.column_names else [])
    dropped = parts.get(export.DROPPED, [])
    reasons = sum((p.errors for p in dropped), Counter())
    not_kept = sum(p.rows for p in dropped) - sum(reasons.values())
    # `datasets` keys its cache by this header, not by the files: a pattern per run that wrote the split (part
    # names start with the run id) gives every export, and every resume of one, a cache of its own, where
    # `part-*` would hand a new export of the same shape the rows of an old one.
    header = {
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": [f"{PART}{r}-*-{s}.parquet" for r in runs(parts[s])]
                                     if counts[s] else [f"{PART}*-{s}.parquet"]} for s in splits]}],
        "dataset_info": {"features": feats._to_yaml_list(),
                         "splits": [{"name": s, "num_examples": counts[s]} for s in splits]},
        "task_categories": ["audio-text-to-text"],
    }
    rows = "\n".join(f"| {s} | {counts[s]} | {sum(p.window_s for p in parts.get(s, [])) / 3600:.4f} |"
                     for s in splits)
    text = f"""---
{yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip()}
---
# {cfg.output.rstrip('/').rsplit('/', 1)[-1]}

Audio-text pairs made by earmark from `{cfg.input}`: each row's `audio` is the window its `{column}` was
generated from, mono at {cfg.export.sample_rate} Hz (FLAC). The windows, prompts and copies of one source
clip are in one split (split by a hash of the clip's id, seed {cfg.export.seed}).

| split | rows | hours |
|---|---|---|
{rows}

- Models: {", ".join(f"`{m}`" for m in models) or "none recorded"}
- Prompts: {"; ".join(f"`{i}`: {p!r}" for i, p in prompts) or "the rows' own conversations"}
- Left out: {sum(p.rows for p in dropped)} rows ({not_kept} not kept by the quality rules; errors: {json.dumps(dict(sorted(reasons.items())))})

```python
from datasets import load_dataset

ds = load_dataset("{cfg.output.rstrip('/')}")
print(ds["{splits[0]}"][0]["{column}"], ds["{splits[0]}"][0]["audio"])
```
"""
    with fs.open(f"{root}/README.md", "w") as f:
        f.write(text)
    exported = sum(counts.values())
    if exported:
        print(f"dataset: {cfg.output} ({', '.join(f'{s} {counts[s]}' for s in splits if counts[s])} rows): "
              f"datasets.load_dataset({cfg.output.rstrip('/')!r}); review page: {cfg.output.rstrip('/')}/_report.html")
    else:
        print(f"dataset: {cfg.output}: 0 rows kept ({sum(p.rows for p in dropped)} left out: see the review page)")
    return {"splits": counts, "rows_exported": exported}


JOB = Job(None, build, derived=True, generates=False, checks=False, split_by="split", finish=card,
          determines=("export",))

if __name__ == "__main__":
    sys.exit(main(JOB, __doc__))
