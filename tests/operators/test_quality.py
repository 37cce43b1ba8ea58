"""The quality stage: flags and keep on every row, best-of-N selection."""
import pyarrow as pa

from operators.quality import Quality, best
from tests.operators.test_rules import SENTENCE


def test_best_of_n_keeps_the_best_and_the_others():
    options = [{"text": "x x x x", "flags": ["loop"], "dropping": True, "score": 0.9},
               {"text": "A long clean caption of rain.", "flags": [], "dropping": False, "score": 0.2},
               {"text": "Rain falls.", "flags": [], "dropping": False, "score": 0.5}]
    assert best(options, "fewest_flags") == 2
    assert best(options, "clap_score") == 0


def test_the_stage_flags_rows_and_keeps_what_passes(rules):
    stage = Quality(column="caption", transcripts=False, select="fewest_flags", rules={k: v.model_dump() for k, v in rules.items()})
    batch = pa.table({"caption": [SENTENCE, "the the the the the the", None, SENTENCE],
                      "error": [None, None, "decode/missing: a.wav: no such file", None],
                      "prompt_id": ["caption"] * 4, "segment_start_s": [0.0] * 4, "segment_end_s": [5.0] * 4,
                      "warning": [None, None, None, "decode/silent: s.wav: peak amplitude below 0.0001"],
                      "finish_reason": ["stop", "length", None, "stop"]})
    out = stage(batch)
    assert out["flags"].to_pylist() == [[], ["loop", "truncated"], [], ["silent_text"]]
    assert out["keep"].to_pylist() == [True, False, False, False]


def test_the_stage_picks_one_of_n_candidates(rules):
    stage = Quality(column="caption", transcripts=False, select="fewest_flags", rules={k: v.model_dump() for k, v in rules.items()})
    batch = pa.table({"caption": ["pass pass pass pass"], "error": pa.array([None], pa.string()),
                      "prompt_id": ["caption"], "candidates": [["pass pass pass pass", SENTENCE, "Rain."]],
                      "finish_reasons": [["length", "stop", "stop"]]})
    out = stage(batch).to_pylist()[0]
    assert out["caption"] == SENTENCE and out["flags"] == [] and out["keep"]
    assert out["candidates"] == ["pass pass pass pass", "Rain."] and out["finish_reason"] == "stop"
    assert "finish_reasons" not in out


def test_a_re_check_chooses_among_the_kept_text_and_the_others(rules):
    """In an output the row's text is the kept candidate and `candidates` the others: all are weighed again."""
    stage = Quality(column="caption", transcripts=False, select="clap_score", rules={k: v.model_dump() for k, v in rules.items()})
    batch = pa.table({"caption": ["Rain."], "error": pa.array([None], pa.string()), "prompt_id": ["caption"],
                      "clap_score": [0.3], "candidates": [[SENTENCE, "x x x x"]], "candidate_scores": [[0.7, 0.5]]})
    out = stage(batch).to_pylist()[0]
    assert (out["caption"], out["clap_score"]) == (SENTENCE, 0.7)
    assert out["candidates"] == ["Rain.", "x x x x"] and out["candidate_scores"] == [0.3, 0.5]
