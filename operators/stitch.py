"""Stitch window rows back into one row per source clip (and prompt): the transcript of a whole file.

Runs after a job's windows are committed, as a Ray Data pass over the part files (group by clip and prompt,
then join), and writes parquet under `clips/` in the output folder, loadable on its own. Window rows stay as
they are; `clips/` is derived, so it is rewritten whenever the run committed something new.

Windows that overlap (`decode.overlap_s`) both hear the words around their seam: the words of the next
window that repeat the end of the text so far are dropped, found by aligning the two texts' words
(case and punctuation aside) over the stretch the overlap can hold.
"""
from __future__ import annotations

import difflib
import re

import numpy as np
import pyarrow as pa

from operators.stage import LIGHT_CPUS

CLIPS = "clips"
GROUP = ["source_manifest", "source_row", "prompt_id"]
READS = GROUP + ["id", "audio", "segment", "segments", "segment_start_s", "segment_end_s", "duration_s", "error"]
WORDS_PER_S = 4.0  # fast speech: bounds how many words an overlap can hold


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def seam(before: list[str], after: list[str], overlap_s: float) -> tuple[int, int]:
    """(words of `before` to keep, words of `after` to drop) so that what both heard appears once: the two
    texts are aligned on the longest run of equal words within the stretch the overlap can hold, and that run
    is kept as the earlier window wrote it."""
    if overlap_s <= 0 or not before or not after:
        return len(before), 0
    n = int(overlap_s * WORDS_PER_S) + 2
    tail, head = [_norm(w) for w in before[-n:]], [_norm(w) for w in after[:n]]
    match = difflib.SequenceMatcher(None, tail, head, autojunk=False).find_longest_match(0, len(tail), 0, len(head))
    if match.size < min(2, len(tail), len(head)):
        return len(before), 0  # nothing both heard for sure: keep every word
    return len(before) - len(tail) + match.a + match.size, match.b + match.size


def join(texts: list[str], overlaps: list[float]) -> str:
    """Window texts in order, each seam's repeated words once; overlaps[k] is the seconds window k+1 shares
    with window k."""
    words = texts[0].split()
    for text, overlap in zip(texts[1:], overlaps):
        nxt = text.split()
        keep, drop = seam(words, nxt, overlap)
        words = words[:keep] + nxt[drop:]
    return " ".join(words)


def stitch_group(t: pa.Table, column: str) -> pa.Table:
    """One clip's window rows (any order) -> its one row: text joined, or the first window's error."""
    t = t.sort_by("segment")
    errors = [e for e in t["error"].to_pylist() if e is not None]
    starts, ends = t["segment_start_s"].to_numpy(zero_copy_only=False), t["segment_end_s"].to_numpy(zero_copy_only=False)
    complete = t.num_rows == t["segments"][0].as_py() and not errors
    text = None
    if complete:
        text = join([x or "" for x in t[column].to_pylist()], list(np.maximum(ends[:-1] - starts[1:], 0.0)))
    first = t.slice(0, 1)
    return pa.table({
        **{c: first[c] for c in ["id", "audio", *GROUP, "duration_s"]},
        "windows": pa.array([t.num_rows], pa.int32()),
        column: pa.array([text], pa.string()),
        "error": pa.array([errors[0] if errors else None if complete else
                           f"stitch/incomplete: {t.num_rows} of {t['segments'][0].as_py()} windows committed"],
                          pa.string()),
    })


def finish(cfg, ledger, column: str, written: int) -> None:
    """The runner's end-of-run step for transcription: clips/ again when this run committed windows."""
    from operators.ledger import output_fs

    fs, root = output_fs(cfg.output)
    if ledger.parts and (written or not fs.exists(f"{root}/{CLIPS}")):
        apply(cfg.output, sorted(ledger.parts), column)


def apply(output: str, files: list[str], column: str) -> str:
    """Write `clips/` from the committed part files `files` (replacing what an earlier run wrote)."""
    import pyarrow.fs as pafs
    import ray

    from operators.ledger import output_fs

    fs, root = output_fs(output)
    target = f"{root}/{CLIPS}"
    if fs.exists(target):
        fs.rm(target, recursive=True)
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    ds = ray.data.read_parquet(files, columns=READS + [column], filesystem=filesystem)
    ds = ds.groupby(GROUP).map_groups(stitch_group, fn_args=(column,), batch_format="pyarrow", num_cpus=LIGHT_CPUS)
    ds.write_parquet(target, filesystem=filesystem)
    return target
