"""From a caption run to a training set, on real Ray: jobs.quality marks the demo's rows (its rules there only
flag), jobs.export writes the dataset, `datasets.load_dataset` reads it with no glue code, and three optimizer
steps of the tiny Audio Flamingo 3 on a batch of it, through the seed guide's collator shape, lower the loss."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="module")
def exported(caption_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    checked, out = str(d / "checked"), str(d / "dataset")
    for cmd in (["jobs.quality", "--config", "configs/quality-demo.yaml", "--input", caption_run["out"], "--output",
                 checked],
                ["jobs.export", "--config", "configs/export.yaml", "--input", checked, "--output", out,
                 "write.rows_per_file=3"]):
        proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    import datasets

    ds = datasets.load_dataset(out)
    # torchcodec (which datasets 5 decodes Audio with) exists only as a CUDA build here: read the bytes with
    # soundfile. On a GPU training box the same column decodes as it is.
    return {"out": out, "ds": ds, "raw": ds.cast_column("audio", datasets.Audio(decode=False))}


def test_the_splits_load_and_each_row_holds_its_own_window(exported, caption_run):
    ds, raw = exported["ds"], exported["raw"]
    assert set(ds) <= {"train", "validation", "test"} and set(ds)
    assert ds["train"].features["audio"].sampling_rate == 16000
    rows = {r["output_id"]: r for r in caption_run["rows"]}
    seen = 0
    for split in raw.values():
        for r in split:
            wave, rate = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")
            window = rows[r["output_id"]]
            assert rate == 16000 and wave.ndim == 1
            assert abs(len(wave) - round((window["segment_end_s"] - window["segment_start_s"]) * 16000)) <= 1
            assert r["caption"] == window["caption"] and r["source_audio"] == window["audio"]
            seen += 1
    assert seen == sum(r["error"] is None for r in caption_run["rows"])  # every good row, no error row
    ids = {s: set(raw[s]["id"]) for s in raw}
    assert not {"broken", "missing"} & set().union(*ids.values())
    assert all(not (ids[a] & ids[b]) for a in ids for b in ids if a < b)  # no clip in two splits


def test_the_40_s_clip_s_windows_stay_together(exported):
    raw = exported["raw"]
    where = {s for s in raw for r in raw[s] if r["id"] == "long-22k"}
    assert len(where) == 1
    split = raw[where.pop()]
    assert sorted(r["segment"] for r in split if r["id"] == "long-22k") == [0, 1]


def test_the_dataset_card_says_what_made_it(exported):
    with open(os.path.join(exported["out"], "README.md")) as f:
        card = f.read()
    assert card.startswith("---\nconfigs:") and "sampling_rate: 16000" in card
    assert "tiny-qwen2-audio" in card and "Left out: 2 rows" in card
    assert all(f"| {s} | {len(exported['ds'][s])} |" in card for s in exported["ds"])


def test_a_batch_trains_the_tiny_audio_flamingo_3(exported, assets):
    """The seed guide's collator shape, written here: a user turn with the text and the row's audio array,
    the caption as the assistant's turn, labels from `output_labels=True`; three AdamW steps."""
    import torch
    from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

    processor = AutoProcessor.from_pretrained(assets["af3"])
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(assets["af3"], dtype=torch.float32)
    split = next(iter(exported["raw"].values()))
    rows = [split[i] for i in range(min(4, len(split)))]

    def collate(rows):
        conversations = [[{"role": "user", "content": [
            {"type": "text", "text": "Describe the audio."},
            {"type": "audio", "audio": sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")[0]}]},
            {"role": "assistant", "content": [{"type": "text", "text": r["caption"]}]}] for r in rows]
        return processor.apply_chat_template(conversations, tokenize=True, add_generation_prompt=False,
                                             return_dict=True, output_labels=True)

    batch = collate(rows)
    assert (batch["labels"] != -100).any() and batch["input_features"].shape[0] == len(rows)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_two_exports_of_one_shape_each_load_their_own_rows(tmp_path):
    """`datasets` caches a folder by its card's header, not its files: two exports with the same features and
    counts in folders of the same name (tonight's over last night's) must not share a cache."""
    import datasets
    import pyarrow as pa

    from jobs.export import card
    from operators import config as config_mod
    from operators.ledger import DERIVED, Ledger
    from operators.write import commit

    cache = str(tmp_path / "hf-cache")
    for night, caption in (("a", "Rain on a roof."), ("b", "A dog barks.")):
        out = str(tmp_path / night / "dataset")
        part = pa.table({"id": ["x"], "caption": [caption], "model": ["m"], "prompt_id": ["caption"],
                         "prompt": ["Describe."], "input_part": ["p"], "input_row": [0], "error": pa.nulls(1, pa.string())})
        commit(part.replace_schema_metadata(DERIVED), out, f"part-run{night}00000000-000000000000-train.parquet")
        cfg = config_mod.load("configs/export.yaml", [], input=out, output=out)  # any committed output
        card(cfg, Ledger(out).update(), "caption", 1)
        assert datasets.load_dataset(out, cache_dir=cache)["train"]["caption"] == [caption]


def test_an_export_that_keeps_no_row_serves_no_dropped_row(tmp_path, capsys):
    """The rules kept nothing: the card still names the splits (by patterns no file matches), so
    `load_dataset` finds no data instead of reading the dropped parts as a train split; the card's counts of
    what was left out sum over every dropped part."""
    import datasets
    import pyarrow as pa

    from jobs.export import card
    from operators import config as config_mod
    from operators.ledger import DERIVED, Ledger
    from operators.write import commit

    out = str(tmp_path / "dataset")
    for k, error in enumerate(["decode/missing: a: no such file", "decode/not_audio: b: not audio", None]):
        part = pa.table({"id": [f"x{k}"], "caption": ["loop loop"], "input_part": ["p"], "input_row": [k],
                         "error": pa.array([error], pa.string())})
        commit(part.replace_schema_metadata(DERIVED), out, f"part-run{k}0000000-000000000000-dropped.parquet")
    cfg = config_mod.load("configs/export.yaml", [], input=out, output=out)
    assert card(cfg, Ledger(out).update(), "caption", 0) == {"splits": {"train": 0, "validation": 0, "test": 0},
                                                            "rows_exported": 0}
    assert "0 rows kept (3 left out" in capsys.readouterr().out
    with open(os.path.join(out, "README.md")) as f:
        text = f.read()
    assert 'Left out: 3 rows (1 not kept by the quality rules; errors: {"decode/missing": 1, "decode/not_audio": 1})' in text
    with pytest.raises(datasets.exceptions.DataFilesNotFoundError):
        datasets.load_dataset(out, cache_dir=str(tmp_path / "hf"))
