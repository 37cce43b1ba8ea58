"""Gathering a window's answers: which are usable, the template filled by prompt and column, the rows listed."""
import json

import pyarrow as pa

from operators.gather import Gather, labels_of


def group(errors=(None, None, None), keep=(True, True, True), labels='["Speech", "Male speech, man speaking"]'):
    n = len(errors)
    return pa.table({"id": ["c"] * n, "audio": ["c.wav"] * n, "source_manifest": ["m.jsonl"] * n,
                     "source_row": pa.array([4] * n, pa.int64()), "segment": pa.array([1] * n, pa.int32()),
                     "segments": pa.array([2] * n, pa.int32()), "prompt_id": ["speech", "describe", "music"][:n],
                     "caption": ["a man talks", "people chat in a room", "no music"][:n],
                     "error": pa.array(list(errors), pa.string()), "keep": list(keep), "flags": [[], [], ["banned"]][:n],
                     "labels": [labels] * n, "input_part": ["p1", "p1", "p2"][:n],
                     "input_row": pa.array([7, 8, 0][:n], pa.int64())})


def stage(template="Workers: {answers} | describe: {answers.describe} | music: {answers.music} | {labels}",
          reference="{labels}", transcript=None, labels="labels"):
    return Gather(source_column="caption", template=template, reference=reference, transcript=transcript, labels=labels)


def test_the_usable_answers_fill_the_template_by_prompt_and_column():
    out = stage()(group(keep=(True, True, False))).to_pylist()
    assert len(out) == 1
    row = out[0]
    assert row["sources"] == [{"prompt_id": "describe", "text": "people chat in a room"},
                              {"prompt_id": "speech", "text": "a man talks"}]  # by prompt id; music not kept
    assert row["prompt"] == ("Workers: people chat in a room\na man talks | describe: people chat in a room | music:  | "
                             "Speech, Male speech, man speaking")
    assert row["reference"] == "Speech, Male speech, man speaking"
    assert row["labels_list"] == ["Speech", "Male speech, man speaking"]  # the labels' own commas kept
    assert (row["input_part"], row["input_row"]) == (["p1", "p2", "p1"], [8, 0, 7])  # describe, music, speech
    assert (row["prompt_id"], row["prompts"], row["segment"], row["segments"], row["error"]) == ("rewrite", 1, 1, 2, None)
    assert "caption" not in row and "keep" not in row and row["labels"] == group()["labels"][0].as_py()


def test_a_window_without_a_usable_answer_is_an_error_row_saying_why_each_was_not():
    row = stage()(group(errors=("decode/missing: c.wav: no such file", None, None), keep=(False, False, False)))
    error = row["error"][0].as_py()
    assert error.startswith("rewrite/no_answers: c.wav window 1: none of its 3 answers is usable: ")
    assert "speech: decode/missing: c.wav: no such file" in error and "music: not kept by quality (flags: banned)" in error
    assert row["prompt"][0].as_py() is None and row["input_row"][0].as_py() == [8, 0, 7]  # its rows are done too


def test_a_row_without_a_named_column_is_an_error_row():
    row = stage(template="{answers} {tags}")(group())
    assert row["error"][0].as_py() == ("rewrite/missing_field: c.wav window 1: the row has no value for 'tags', which "
                                       "the template names")


def test_the_transcript_guard_reads_an_answer_or_a_column():
    assert stage(transcript="speech")(group())["transcript"][0].as_py() == "a man talks"
    assert stage(transcript="audio")(group())["transcript"][0].as_py() == "c.wav"


def test_labels_are_lists_or_comma_separated_text():
    assert labels_of(json.dumps(["Dog", "Bark, woof"])) == ["Dog", "Bark, woof"]
    assert labels_of("Dog, Bark") == ["Dog", "Bark"] and labels_of(None) == [] and labels_of(["Cat"]) == ["Cat"]
