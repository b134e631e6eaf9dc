from __future__ import annotations

import pytest

from training.text_metrics import (
    _regex_sentences,
    exact_match,
    f1,
    normalize_answer,
    rouge,
    split_sentences_for_rougelsum,
    squad_metrics,
)


def test_normalization_follows_squad_v11() -> None:
    assert normalize_answer("The Denver Broncos!") == "denver broncos"
    assert normalize_answer("  An apple,  a PEAR\tand the plum. ") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"  # articles only as whole words


def test_exact_match_on_hand_made_pairs() -> None:
    assert exact_match("The Denver Broncos!", ["denver broncos"]) == 1.0
    assert exact_match("Denver", ["denver broncos"]) == 0.0
    assert exact_match("theory", ["ory"]) == 0.0
    assert exact_match("Carolina", ["Denver Broncos", "the Carolina Panthers", "carolina"]) == 1.0


def test_f1_on_hand_made_pairs() -> None:
    # "big red dog" vs "red dog barked": 2 common tokens, P = R = 2/3.
    assert f1("the big red dog", ["a red dog barked"]) == pytest.approx(2 / 3)
    # vs "broncos": P = 1/3, R = 1 -> 0.5; vs "denver broncos": P = 2/3, R = 1 -> 0.8; max is 0.8.
    assert f1("Denver Broncos team", ["Broncos", "the Denver Broncos"]) == pytest.approx(0.8)
    assert f1("Broncos", ["Denver Broncos", "Broncos."]) == 1.0
    assert f1("nothing shared", ["denver broncos"]) == 0.0
    # Repeated tokens count with multiplicity: "go go go" vs "go" shares 1 token, P = 1/3, R = 1 -> 0.5.
    assert f1("go go go", ["go"]) == pytest.approx(0.5)


def test_squad_metrics_are_means_as_fractions() -> None:
    result = squad_metrics(
        ["The Denver Broncos!", "the big red dog", "nothing shared"],
        [["denver broncos"], ["a red dog barked"], ["denver broncos"]],
    )
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert squad_metrics([], []) == {"exact_match": 0.0, "f1": 0.0}


def test_squad_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="predictions"):
        squad_metrics(["a"], [])
    with pytest.raises(ValueError, match="gold"):
        f1("a", [])
    with pytest.raises(TypeError):
        exact_match("a", "a")  # type: ignore[arg-type]


def test_rouge_on_a_hand_computed_pair() -> None:
    # Unigrams: the x2, cat, on, mat shared = 5 of 6 on each side -> 5/6. Bigrams: "the cat", "on the",
    # "the mat" shared = 3 of 5 -> 0.6. LCS "the cat on the mat" = 5 -> 5/6.
    result = rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    assert result == pytest.approx({"rouge1": 5 / 6, "rouge2": 0.6, "rougeL": 5 / 6, "rougeLsum": 5 / 6})


def test_rouge_uses_the_porter_stemmer() -> None:
    # Stemmed: cats->cat, running->run (words of <= 3 chars such as "was" are left alone, "were" stays "were"):
    # the, cat, run shared = 3 of 4 -> 0.75; bigrams only "the cat" of 3 -> 1/3.
    result = rouge(["the cats were running"], ["the cat was run"])
    assert result["rouge1"] == pytest.approx(0.75)
    assert result["rouge2"] == pytest.approx(1 / 3)


def test_rouge_identical_strings_score_one_and_results_are_means() -> None:
    text = "A quick brown fox jumps over the lazy dog. It was fast!"
    assert rouge([text], [text]) == pytest.approx(dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"), 1.0))
    two = rouge([text, "the cat sat on the mat"], [text, "the cat is on the mat"])
    assert two["rouge1"] == pytest.approx((1.0 + 5 / 6) / 2)
    assert two["rouge2"] == pytest.approx((1.0 + 0.6) / 2)
    assert rouge([], []) == dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"), 0.0)
    with pytest.raises(ValueError):
        rouge(["a"], ["a", "b"])


def test_rougelsum_is_computed_over_sentences() -> None:
    # Swapped sentences: the LCS over the whole text is "the cat sat" (3 of 6 -> 0.5), but the summary-level
    # LCS matches every reference sentence fully -> 1.0.
    result = rouge(["The cat sat. The dog ran."], ["The dog ran. The cat sat."])
    assert result["rougeL"] == pytest.approx(0.5)
    assert result["rougeLsum"] == pytest.approx(1.0)
    assert result["rouge1"] == pytest.approx(1.0)


def test_sentence_split_puts_one_sentence_per_line() -> None:
    assert _regex_sentences("One. Two? Three!  Four") == ["One.", "Two?", "Three!", "Four"]
    assert split_sentences_for_rougelsum("  The cat sat. The dog ran.  ") == "The cat sat.\nThe dog ran."
