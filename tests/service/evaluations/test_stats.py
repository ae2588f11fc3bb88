"""The evaluation statistics against known values (textbook examples and exact binomial sums)."""

import math

import pytest

from service.evaluations.stats import compare, mcnemar_exact, recommend, wilson_interval


@pytest.mark.parametrize(
    ("passed", "total", "lo", "hi"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, table I (Wilson score, no continuity
        # correction): 81/263 -> 0.2553-0.3662, 15/148 -> 0.0624-0.1605, 0/20 -> 0-0.1611,
        # 1/29 -> 0.0061-0.1718.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombes_table(passed, total, lo, hi):
    got = wilson_interval(passed, total)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_interval_stays_inside_zero_one_and_is_symmetric():
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.85
    assert wilson_interval(3, 10) == pytest.approx(
        tuple(1 - x for x in reversed(wilson_interval(7, 10)))
    )
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (0, 6, 2 / 2**6),  # 0.03125
        (1, 9, 2 * (1 + 10) / 2**10),  # 0.021484375
        (5, 5, 1.0),  # the p-value is capped at 1
        (3, 12, 2 * sum(math.comb(15, i) for i in range(4)) / 2**15),  # 0.03515625
        (0, 5, 0.0625),  # five discordant pairs can never reach p < 0.05
    ],
)
def test_exact_mcnemar_known_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)
    assert mcnemar_exact(c, b) == pytest.approx(p)


def test_compare_counts_only_discordant_pairs():
    a = [True] * 8 + [False] * 2
    b = [False] * 8 + [False] * 2
    c = compare("adapter_rag:x", a, "prompt", b)
    assert (c.only_a, c.only_b, c.diff) == (8, 0, 0.8)
    assert c.p_value == pytest.approx(2 / 2**8) and c.verdict == "a_better"
    same = compare("rag", a, "prompt", a)
    assert same.verdict == "no_difference" and same.p_value == 1.0
    assert compare("prompt", b, "rag", a).verdict == "b_better"
    with pytest.raises(ValueError):
        compare("a", [True], "b", [True, False])


def test_recommends_the_simplest_arm_not_detectably_worse():
    good = [True] * 18 + [False] * 2
    also = [True] * 17 + [False] * 3
    bad = [False] * 20
    # rag and adapter_rag do as well: rag is simpler; prompt is detectably worse
    r = recommend({"prompt": bad, "rag": also, "adapter_rag:x": good})
    assert r is not None and r.arm == "rag"
    assert "not detectably" in r.reason and "adapter_rag:x" in r.reason
    # prompt is as good as the rest: start with the simplest approach
    assert recommend({"prompt": also, "rag": good, "auto": good}).arm == "prompt"
    # only the adapter passes: it is recommended, and the reason says why the others are not
    r = recommend({"prompt": bad, "rag": bad, "adapter_rag:x@2": good})
    assert r.arm == "adapter_rag:x@2"
    assert "every simpler arm is detectably worse" in r.reason and "p=" in r.reason
    # auto routes between the paths: never the recommendation itself
    assert recommend({"auto": good}) is None


def test_recommendation_needs_the_difference_to_be_detectable_not_just_present():
    # 4 items only the adapter passed: a visible gap that an exact test cannot call (p=0.125)
    adapter = [True] * 10
    rag = [True] * 6 + [False] * 4
    assert recommend({"rag": rag, "adapter_rag:x": adapter}).arm == "rag"
