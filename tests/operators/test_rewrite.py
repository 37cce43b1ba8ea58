"""The rewrite's acceptance test, try by try (the engine and CLAP around it: tests/jobs/test_rewrite.py)."""
from types import SimpleNamespace

from operators.rewrite import Rewrite, lists, quotes

ACCEPT = {"above_reference": True, "min_clap": 0.2, "quote_words": 4}


def judge(text, score, reference=0.3, transcript=None, labels=(), **accept):
    return Rewrite.judge(SimpleNamespace(accept={**ACCEPT, **accept}), text, score, reference, transcript, list(labels))


def test_a_try_passes_at_or_above_its_reference_and_the_floor():
    assert judge("A dog barks twice.", 0.3) == []
    assert judge("A dog barks twice.", 0.25) == ["CLAP 0.250 below its reference's 0.300"]
    assert judge("A dog barks twice.", 0.1, reference=0.05) == ["CLAP 0.100 below rewrite.accept.min_clap=0.2"]
    assert judge("A dog barks.", 0.1, reference=None, above_reference=False, min_clap=None) == []  # no test asked
    assert judge("  ", 0.5) == ["empty"]


def test_content_guards_catch_a_quoted_transcript_and_copied_labels():
    said = "please send the quarterly report to the finance team"
    assert quotes("A man says: Please send the quarterly report, calmly.", said, 4)
    assert not quotes("A man asks for the quarterly numbers.", said, 4)
    assert judge("He says please send the quarterly report.", 0.5, transcript=said) == ["quotes 4 words of the transcript"]
    labels = ["Speech", "Male speech, man speaking"]
    assert lists("Speech, male speech, man speaking.", labels) and not lists("A man is speaking.", labels)
    assert not lists("Speech in a room.", ["Speech"])  # one label is a word, not a copied list
    assert judge("Speech, Male speech, man speaking", 0.5, labels=labels) == ["lists the labels as given"]
