"""Splits by source clip: deterministic, in proportion, seeded."""
from collections import Counter

from operators.export import split_of

SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def test_a_clip_always_lands_in_the_same_split_and_splits_follow_the_fractions():
    keys = [f"clip-{i}" for i in range(20000)]
    first = [split_of(k, 0, SPLITS) for k in keys]
    assert first == [split_of(k, 0, SPLITS) for k in keys]
    counts = Counter(first)
    assert all(abs(counts[s] / len(keys) - f) < 0.01 for s, f in SPLITS.items())
    assert sum(a != b for a, b in zip(first, (split_of(k, 1, SPLITS) for k in keys))) > 5000  # the seed matters
