"""Windows joined back into one transcript per clip: seams de-duplicated, incomplete clips said so."""
import pyarrow as pa

from operators import stitch


def test_words_heard_by_both_windows_appear_once():
    before = "We will meet in the conference room at three".split()
    after = "room at three o'clock and then go to lunch.".split()
    keep, drop = stitch.seam(before, after, overlap_s=2.0)
    assert before[:keep] + after[drop:] == "We will meet in the conference room at three o'clock and then go to lunch.".split()


def test_seams_tolerate_case_punctuation_and_a_cut_word():
    text = stitch.join(["Please send the quarterly report to the", "Report, to the finance team by Friday."], [1.5])
    assert text == "Please send the quarterly report to the finance team by Friday."
    # A window that starts mid-word hears a fragment ("ort") before the shared words.
    assert stitch.join(["turn off the lights when", "ort the lights when you leave"], [1.0]) == \
        "turn off the lights when you leave"


def test_no_overlap_or_no_shared_words_keeps_every_word():
    assert stitch.join(["one two three", "three four"], [0.0]) == "one two three three four"
    assert stitch.join(["alpha beta gamma", "delta epsilon"], [2.0]) == "alpha beta gamma delta epsilon"


def rows(texts, segments=None, errors=None, overlap=0.0):
    n = len(texts)
    return pa.table({"id": ["c"] * n, "audio": ["a.wav"] * n, "source_manifest": ["m"] * n, "source_row": [0] * n,
                     "prompt_id": ["transcribe"] * n, "segment": list(range(n))[::-1],  # any order in
                     "segments": [segments or n] * n, "duration_s": [60.0] * n,
                     "segment_start_s": [30.0 * k - overlap * (k > 0) for k in range(n)][::-1],
                     "segment_end_s": [30.0 * (k + 1) for k in range(n)][::-1],
                     "error": errors or [None] * n, "text": texts[::-1]})


def test_a_clip_row_joins_its_windows_in_order():
    out = stitch.stitch_group(rows(["the train was late this", "late this morning"], overlap=1.0), "text").to_pylist()
    assert out == [{"id": "c", "audio": "a.wav", "source_manifest": "m", "source_row": 0, "prompt_id": "transcribe",
                    "duration_s": 60.0, "windows": 2, "text": "the train was late this morning", "error": None}]


def test_a_clip_with_an_error_or_a_missing_window_has_no_text():
    failed = stitch.stitch_group(rows(["a", None], errors=[None, "generate/engine: a.wav: boom"]), "text")
    assert failed["text"].to_pylist() == [None] and failed["error"].to_pylist() == ["generate/engine: a.wav: boom"]
    short = stitch.stitch_group(rows(["a", "b"], segments=3), "text")
    assert short["error"].to_pylist() == ["stitch/incomplete: 2 of 3 windows committed"]
