"""The quality rules: each a named flag whose parameters, their defaults and its check sit in one class.

A row's `flags` names the rules its text trips; `keep` is false when one of them drops rows. The defaults are
the project's (sources: NeMo Curator's Granary filters: unique-word ratio 0.4, 25-character words, 40
characters a second, hallucination phrases; AFSynthetic's banned keywords and CLAP threshold 0.45). The rule
library, configs/rules.yaml (`quality.library`), holds the phrase lists and may change any value; a job
changes them with `quality.rules`, a prompt of configs/prompts.yaml with its own `quality:` (a transcript
wants fast_text, a caption does not). docs/config.md lists them all.
"""
from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

WORD = re.compile(r"\w+", re.UNICODE)
# Scripts written without spaces between words: a run of them is not one long word.
UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def plain(text: str) -> str:
    return " ".join(words_of(text))


class Row:
    """What the rules may look at besides the text."""

    __slots__ = ("seconds", "speech_s", "silent", "finish_reason", "score", "accepted", "language")

    def __init__(self, seconds, speech_s, silent, finish_reason, score, accepted=None, language=None):
        self.seconds, self.speech_s, self.silent = seconds, speech_s, silent
        self.finish_reason, self.score, self.accepted = finish_reason, score, accepted
        self.language = language  # the row's spoken language, where the job knows it (multilingual Whisper)


class Text:
    """A text as the rules read it, worked out once for all of them."""

    __slots__ = ("raw", "low", "words", "blank")

    def __init__(self, text: str | None):
        self.raw = text or ""
        self.low, self.words, self.blank = self.raw.lower(), words_of(self.raw), not self.raw.strip()


class Rule(BaseModel):
    """A named flag. `drop`: a row with this flag is not kept (`keep` false)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="the rule runs")
    drop: bool = Field(True, description="a row it flags is not kept (`keep` false)")

    def trips(self, t: Text, row: Row, identifier) -> bool:
        raise NotImplementedError


class Empty(Rule):
    def trips(self, t, row, identifier):
        return t.blank


class TooShort(Rule):
    min_words: int = Field(3, ge=0, description="fewer words than this")

    def trips(self, t, row, identifier):
        return not t.blank and len(t.words) < self.min_words


class TooLong(Rule):
    drop: bool = Field(False, description="a row it flags is not kept (`keep` false)")
    max_words: int = Field(300, ge=1, description="more words than this")

    def trips(self, t, row, identifier):
        return len(t.words) > self.max_words


class Loop(Rule):
    min_words: int = Field(8, ge=1, description="the unique-word ratio is judged on texts at least this long")
    max_unique_ratio: float = Field(0.4, gt=0, le=1, description="distinct words over words at or under this "
                                    "(NeMo Curator's Granary threshold)")
    max_ngram: int = Field(4, ge=1, description="phrases of 2 to this many words are looked for repeated")
    min_repeats: int = Field(4, ge=2, description="the same word this many times in a row")
    min_phrase_repeats: int = Field(3, ge=2, description="the same phrase this many times in a row")
    min_token_chars: int = Field(9, ge=2, description="a word at least this long made of one piece repeated ...")
    min_token_repeats: int = Field(3, ge=2, description="... this many times (`passpasspass`)")

    def trips(self, t, row, identifier):
        return is_loop(t.raw, self)


def is_loop(text: str, rule: Loop) -> bool:
    """Repetition: few distinct words, a run of the same 1..max_ngram words, or a word made of one repeated
    piece ("passpasspass")."""
    words = words_of(text)
    if len(words) >= rule.min_words and len(set(words)) / len(words) <= rule.max_unique_ratio:
        return True
    for n in range(1, rule.max_ngram + 1):
        k = rule.min_repeats if n == 1 else rule.min_phrase_repeats
        for i in range(len(words) - n * k + 1):
            if all(words[i + j * n:i + (j + 1) * n] == words[i:i + n] for j in range(1, k)):
                return True
    piece = re.compile(r"(.{2,}?)\1{%d,}" % (rule.min_token_repeats - 1), re.UNICODE)
    for token in text.split():
        m = piece.search(token) if len(token) >= rule.min_token_chars else None
        if m and m.end() - m.start() >= 0.8 * len(token):
            return True
    return False


class LongWord(Rule):
    max_chars: int = Field(25, ge=1, description="a word this long (words of scripts without spaces are exempt)")
    ratio: float = Field(3.0, gt=1, description="or this many times the next-longest word ...")
    ratio_min_chars: int = Field(12, ge=1, description="... when it has at least this many characters")

    def trips(self, t, row, identifier):
        words = [re.sub(r"^\W+|\W+$", "", w) for w in t.raw.split() if not UNSPACED.search(w)]
        lengths = sorted((len(w) for w in words if w), reverse=True)
        if not lengths:
            return False
        return lengths[0] >= self.max_chars or (len(lengths) > 1 and lengths[0] >= self.ratio_min_chars
                                                and lengths[0] >= self.ratio * lengths[1])


class FastText(Rule):
    enabled: bool = Field(False, description="the rule runs (on for transcripts: configs/prompts.yaml)")
    max_chars_per_s: float = Field(40.0, gt=0, description="characters per second of the row's audio")

    def trips(self, t, row, identifier):
        return bool(row.seconds) and len(t.raw.strip()) / row.seconds > self.max_chars_per_s


class Phrases(Rule):
    phrases: list[str] = Field(default_factory=list, description="matched case-insensitively, anywhere in the text")

    def trips(self, t, row, identifier):
        return any(p in t.low for p in self.phrases)


class WholeText(Rule):
    phrases: list[str] = Field(default_factory=list, description="the whole text, case and punctuation aside")

    def trips(self, t, row, identifier):
        return not t.blank and plain(t.raw) in {plain(p) for p in self.phrases}


class Language(Rule):
    expected: str | None = Field("en", description="ISO 639-1; null: any language. Transcripts are checked against "
                                 "their row's `language`")
    min_confidence: float = Field(0.8, ge=0, le=1, description="flagged when the detector's probability for "
                                  "`expected` is below 1 - this (mass split between related languages, zh, wuu, "
                                  "yue, still counts against)")
    min_words: int = Field(3, ge=1, description="shorter texts are not judged")

    def trips(self, t, row, identifier):
        """Whether the text is not in the row's spoken language (where the row says it), else `expected`."""
        expected = row.language or self.expected
        if expected is None or identifier is None:
            return False
        # Scripts without spaces (Chinese, Japanese) are one "word" per run: count characters there.
        if max(len(t.words), len(t.raw.strip()) // 4) < self.min_words:
            return False
        return dict(identifier.rank(t.raw)).get(expected, 0.0) < 1 - self.min_confidence


class SilentText(Rule):
    def trips(self, t, row, identifier):
        return row.silent and not t.blank


class NoSpeech(Rule):
    enabled: bool = Field(False, description="the rule runs (on for transcripts: configs/prompts.yaml)")
    min_speech_s: float = Field(0.1, ge=0, description="text on audio with less speech than this (Silero VAD, "
                                "`speech_s`)")

    def trips(self, t, row, identifier):
        return row.speech_s is not None and row.speech_s < self.min_speech_s and not t.blank


class Truncated(Rule):
    drop: bool = Field(False, description="a row it flags is not kept (`keep` false)")

    def trips(self, t, row, identifier):
        return row.finish_reason == "length"


class LowClap(Rule):
    min_score: float = Field(0.45, ge=-1, le=1, description="CLAP cosine similarity of the audio and the text")

    def trips(self, t, row, identifier):
        return row.score is not None and row.score < self.min_score


class Rejected(Rule):
    def trips(self, t, row, identifier):
        return row.accepted is False


class Rules(BaseModel):
    """Every quality rule, in the order a row's `flags` lists them."""

    model_config = ConfigDict(extra="forbid")

    empty: Empty = Field(default_factory=Empty, description="no text at all")
    too_short: TooShort = Field(default_factory=TooShort, description="fewer words than `min_words`")
    too_long: TooLong = Field(default_factory=TooLong, description="more words than `max_words`")
    loop: Loop = Field(default_factory=Loop, description="repetition: `the the the the`, `passpasspass`, few distinct "
                       "words")
    long_word: LongWord = Field(default_factory=LongWord, description="a word no language has")
    fast_text: FastText = Field(default_factory=FastText, description="more text than the audio can hold "
                                "(transcripts)")
    refusal: Phrases = Field(default_factory=Phrases, description="the model declined (`i'm sorry`)")
    banned: Phrases = Field(default_factory=Phrases, description="vague or meta captions that teach nothing about "
                            "the sound")
    hallucination: WholeText = Field(default_factory=WholeText, description="whole texts speech models write on "
                                     "silence or noise")
    language: Language = Field(default_factory=Language, description="text not in the expected language (py3langid)")
    silent_text: SilentText = Field(default_factory=SilentText, description="text on a clip decode found silent "
                                    "(peak below -80 dBFS)")
    no_speech: NoSpeech = Field(default_factory=NoSpeech, description="text on audio without speech (VAD)")
    truncated: Truncated = Field(default_factory=Truncated, description="generation stopped at `sampling.max_tokens`")
    low_clap: LowClap = Field(default_factory=LowClap, description="CLAP score below `min_score` (when scoring runs)")
    rejected: Rejected = Field(default_factory=Rejected, description="a rewrite that failed its acceptance test on "
                               "every try")

    def flags(self, text: str | None, row: Row, identifier=None) -> list[str]:
        """The names of the rules `text` trips, in order. `identifier`: py3langid's, where the language rule runs."""
        t = Text(text)
        return [name for name in type(self).model_fields
                if (rule := getattr(self, name)).enabled and rule.trips(t, row, identifier)]

    def dropping(self, names: list[str]) -> bool:
        return any(getattr(self, n).drop for n in names)
