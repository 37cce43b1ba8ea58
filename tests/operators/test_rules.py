"""Quality rules with texts that must and must not trip them, rules per prompt, and a bad rule config."""
import pytest

from operators import config as config_mod
from operators.rules import Row, is_loop

SENTENCE = "A dog barks twice in the distance while heavy rain falls on a tin roof."


@pytest.fixture(scope="module")
def language():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def check(text, rules, prompt="", seconds=10.0, speech=None, silent=False, reason="stop", score=None, language=None):
    return rules[prompt].flags(text, Row(seconds, speech, silent, reason, score), language)


def test_a_clean_caption_has_no_flag(rules, language):
    assert check(SENTENCE, rules, language=language) == []


@pytest.mark.parametrize("text", ["the the the the the the", "passpasspasspasspasspass",
                                  "+passpasspasspasspasspasspasspasspasspasspasspasspass",
                                  "a dog barks a dog barks a dog barks a dog barks",
                                  "oof barks( throughoof barks( throughoof barks( throughoof barks( through"])
def test_loops_are_flagged(text, rules):
    assert "loop" in check(text, rules)


@pytest.mark.parametrize("text", [SENTENCE, "It was a very very good day for a walk in the park.",
                                  "Knock knock, who is there? A man answers the door and laughs.",
                                  "Mississippi river boats blow their horns at the pier."])
def test_real_sentences_with_repeats_are_not_loops(text, rules):
    assert not is_loop(text, rules[""].loop)


def test_word_counts_long_words_and_emptiness(rules):
    assert check("", rules) == ["empty"] and check("   ", rules) == ["empty"]
    assert check("A dog.", rules) == ["too_short"]
    assert "too_long" in check(" ".join(["sound"] * 301 + ["end"]), rules)
    assert "long_word" in check("The sound of a supercalifragilisticexpialidocious machine humming.", rules)
    assert "long_word" in check("A dog barks at the xxxxxxxxxxxxxxxxxx.", rules)  # 3x the next-longest word
    assert "long_word" not in check(SENTENCE, rules)


def test_refusals_banned_phrases_and_hallucinations(rules):
    assert "refusal" in check("I'm sorry, but I can't listen to audio files.", rules)
    assert "banned" in check("It is unclear what sound this is, maybe a machine running.", rules)
    assert "hallucination" in check("Thank you.", rules) and "hallucination" not in check(SENTENCE, rules)


def test_wrong_language_is_flagged_and_short_or_unsure_text_is_not(rules, language):
    assert "language" in check("一只狗在远处叫，雨落在铁皮屋顶上，一辆车慢慢开过。", rules, language=language)
    assert "language" in check("Ein Hund bellt in der Ferne, während Regen auf ein Blechdach fällt.", rules,
                               language=language)
    assert "language" not in check(SENTENCE, rules, language=language)
    assert "language" not in check("Ja.", rules, language=language)  # too short to judge


def test_a_transcript_is_checked_against_its_rows_language(rules, language):
    """A row that says its language (multilingual Whisper's `language`) is checked against it, not against
    the rule's `expected`."""
    german = "Ein Hund bellt in der Ferne, während Regen auf ein Blechdach fällt."

    def said(text, spoken):
        return rules[""].flags(text, Row(10.0, None, False, "stop", None, None, spoken), language)

    assert "language" not in said(german, "de") and "language" in said(SENTENCE, "de")
    assert "language" in said(german, None)  # no language on the row: the rule's (en)


def test_prompts_change_rules(rules, language):
    """configs/prompts.yaml: transcripts want fast_text and no_speech; Chinese transcripts expect Chinese."""
    text = "Please send the quarterly report to the finance team by Friday."
    assert check(text, rules, "transcribe", seconds=1.0) == ["fast_text"]
    assert check(text, rules, "caption", seconds=1.0) == []  # captions may be long for short clips
    assert check("Thank you.", rules, "transcribe", speech=0.0) == ["hallucination", "no_speech"]
    zh = "一只狗在远处叫，雨落在铁皮屋顶上，一辆车慢慢开过。"
    assert "language" in check(zh, rules, "caption", language=language)
    assert "language" not in check(zh, rules, "transcribe_zh", seconds=10.0, language=language)


def test_silence_truncation_and_low_scores(rules):
    assert "silent_text" in check(SENTENCE, rules, silent=True)
    assert "silent_text" not in check("", rules, silent=True)
    assert "truncated" in check(SENTENCE, rules, reason="length")
    assert "low_clap" in check(SENTENCE, rules, score=0.2) and "low_clap" not in check(SENTENCE, rules, score=0.6)


def test_bad_rule_config_names_the_key(cfg):
    bad = cfg.model_copy(deep=True)
    bad.quality.rules = {"loop": {"max_unique_ratio": 2}}
    with pytest.raises(config_mod.ConfigError, match=r"quality.rules.loop.max_unique_ratio"):
        config_mod.quality_rules(bad)
    bad.quality.rules = {"lopo": {"drop": False}}
    with pytest.raises(config_mod.ConfigError, match=r"quality.rules.lopo: .*rules: empty, too_short"):
        config_mod.quality_rules(bad)
