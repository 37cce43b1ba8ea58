"""The stage contract: what a stage reads must be there, what it adds must be declared, what it drops leaves,
for a stage that returns one table and one that yields several; its working and records columns are among what
it writes, and the sets that the write stage, the export and dedup take from them."""
import pyarrow as pa
import pytest

from operators.stage import Columns, Stage, declared, dropped, put


class Tag(Stage):
    reads = ("text",)
    writes = ("tag",)
    drops = ("waveform",)

    def process(self, batch):
        return put(batch, tag=[t.upper() for t in batch.column("text").to_pylist()], **self.cfg)


class Split(Tag):
    def process(self, batch):
        for k in range(batch.num_rows):
            yield put(batch.slice(k, 1), tag=["x"], **self.cfg)


BATCH = pa.table({"text": ["a", "b"], "waveform": [[0.0], [1.0]]})


@pytest.mark.parametrize("stage", [Tag, Split])
def test_declared_columns_are_written_and_dropped_ones_leave(stage):
    out = stage()(BATCH)
    for table in [out] if isinstance(out, pa.Table) else list(out):
        assert table.column_names == ["text", "tag"]


@pytest.mark.parametrize("stage", [Tag, Split])
def test_a_column_the_stage_does_not_declare_is_refused(stage):
    with pytest.raises(KeyError, match=rf"{stage.__name__} wrote columns it does not declare: \['note'\]"):
        out = stage(note=["?", "?"] if stage is Tag else ["?"])(BATCH)
        list(out) if not isinstance(out, pa.Table) else out


def test_a_column_the_stage_reads_must_be_there():
    with pytest.raises(KeyError, match=r"Tag needs columns \['text'\]"):
        Tag()(BATCH.drop_columns(["text"]))


def test_a_column_named_twice_is_dropped_once():
    """Arrow's drop_columns given a name twice also drops the column after it."""
    t = pa.table({"a": [1], "b": [2], "c": [3]})
    assert dropped(t, ("b", "b", "x")).column_names == ["a", "c"]


def test_working_and_records_columns_must_be_written():
    with pytest.raises(TypeError, match=r"Bad declares \['waveform'\] working or records, but not in its writes"):
        type("Bad", (Stage,), {"writes": ("tag",), "working": ("waveform",)})
    with pytest.raises(TypeError, match=r"\['keep'\]"):
        Columns(writes=("tag",), records=("keep",))


def test_the_column_sets_are_the_stages_declarations():
    from jobs import dedup
    from operators import export, write
    from operators.decode import Decode
    from operators.generate import Generate

    assert declared("working", Decode, Generate, Columns(writes=("a", "waveform"), working=("waveform",))) == \
        ("waveform", "prompt_text")  # each once, in order
    assert {"waveform", "prompt_text", "audio_uris", "audio_bytes", "chat"} <= set(write.DROP)
    assert {"prompt_tokens", "keep", "run_id", "audio_hash", "contaminated_by"} <= set(export.INTERNAL)
    assert not {"caption", "flags", "duplicate_of", "source_manifest"} & set(export.INTERNAL)  # a training row's
    assert {"fingerprint", "duplicate_of", "keep", "source_row", "input_part", "output_id"} <= dedup.ADDED
    assert not {"id", "audio", "language", "labels"} & dedup.ADDED  # a manifest's own: the kept manifest keeps them
