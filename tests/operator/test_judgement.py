"""The statistics that judge a canary (modeldeploy.decisions.judgement), against SciPy's own tests on
the same samples, and table-driven for the cases a window of Prometheus data produces: ties (values
in one bucket), empty buckets, one side with no data, NaN, too few answers. Then the property the
rollouts rest on, measured by simulation: identical versions are almost never judged worse, a 50%
slower one or one with 5% errors always is."""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
from modeldeploy.decisions import judgement as j
from modelserver.contract import LATENCY_BUCKETS_SECONDS as BOUNDS
from scipy import stats


def binned(samples: np.ndarray) -> list[float]:
    counts = [0.0] * (len(BOUNDS) + 1)
    for x in samples:
        counts[bisect.bisect_left(BOUNDS, float(x))] += 1
    return counts


def expand(counts: list[float]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), np.asarray(counts, dtype=int))


@pytest.mark.parametrize("seed", range(8))
def test_mann_whitney_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    new = [float(x) for x in rng.integers(0, 6, size=12)]  # few buckets: many ties
    old = [float(x) for x in rng.integers(0, 6, size=12)]
    ours = j.mann_whitney(new, old)
    for alt, p in (("greater", ours.p_greater), ("less", ours.p_less)):
        ref = stats.mannwhitneyu(expand(new), expand(old), alternative=alt, method="asymptotic", use_continuity=True)
        assert p == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.u == stats.mannwhitneyu(expand(new), expand(old)).statistic


@pytest.mark.parametrize(("k1", "n1", "k2", "n2"), [(5, 100, 0, 400), (3, 50, 10, 200), (0, 10, 0, 10), (10, 10, 0, 10),
                                                    (1, 1000, 30, 1000)])
def test_fisher_matches_scipy(k1: int, n1: int, k2: int, n2: int) -> None:
    ref = stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue
    assert j.fisher_greater(k1, n1, k2, n2) == pytest.approx(ref, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("k", "n", "p"), [(5, 100, 0.01), (0, 100, 0.01), (100, 100, 0.5), (3, 50, 0.01), (40, 500, 0.05)])
def test_binomial_matches_scipy(k: int, n: int, p: float) -> None:
    assert j.binomial_sf(k, n, p) == pytest.approx(stats.binomtest(k, n, p, alternative="greater").pvalue, rel=1e-9)


def test_quantiles_interpolate_inside_a_bucket_as_prometheus_does() -> None:
    bounds = [1.0, 2.0, 4.0]
    assert j.quantile([0, 10, 0, 0], bounds, 0.5) == pytest.approx(1.5)
    assert j.quantile([10, 0, 0, 0], bounds, 0.99) == pytest.approx(0.99)  # the first bucket starts at 0
    assert j.quantile([0, 0, 0, 5], bounds, 0.99) == 4.0  # +Inf answers the last bound
    assert j.quantile([0, 0, 0, 0], bounds, 0.5) is None


def test_all_answers_in_one_bucket_is_no_difference() -> None:
    counts = [0.0] * (len(BOUNDS) + 1)
    counts[60] = 500
    old = list(counts)
    old[60] = 5000
    rank = j.mann_whitney(counts, old)
    assert (rank.p_greater, rank.p_less) == (0.5, 0.5)  # every pair ties: no variance, nothing to see
    v = j.judge_latency(counts, old, BOUNDS, max_ratio=1.2, min_delta_ms=1, confidence=0.99, min_requests=100)
    assert v.result == j.PASS and v.figures["ratioP99"] == pytest.approx(1.0) == v.figures["ratioP50"]


@pytest.mark.parametrize(("new", "old", "result", "words"), [
    (None, [1.0] * 10, j.INCONCLUSIVE, "too few"),
    ([1.0] * 10, None, j.INCONCLUSIVE, "too few"),
    ([math.nan] + [50.0] * 9, [50.0] * 10, j.INCONCLUSIVE, "too few"),
    ([-1.0] + [50.0] * 9, [50.0] * 10, j.INCONCLUSIVE, "too few"),
    ([0.0] * 164, [0.0] * 164, j.INCONCLUSIVE, "new 0, old 0"),
])
def test_latency_without_usable_data_is_inconclusive(new, old, result, words) -> None:  # type: ignore[no-untyped-def]
    pad = lambda c: None if c is None else (c + [0.0] * (len(BOUNDS) + 1 - len(c)))  # noqa: E731
    v = j.judge_latency(pad(new), pad(old), BOUNDS, max_ratio=1.2, min_delta_ms=1, confidence=0.99, min_requests=100)
    assert v.result == result and words in v.reason


@pytest.mark.parametrize(("k1", "n1", "k2", "n2", "result"), [
    (25, 500, 0, 5000, j.HIGH),  # 5% against 0%: both tests agree
    (2, 500, 0, 5000, j.PASS),  # 0.4%: under the bound
    (8, 500, 0, 5000, j.PASS),  # 1.6%: above the bound, not significantly (binomial p 0.09)
    (25, 500, 250, 5000, j.PASS),  # 5% against the old version's 5%: not a regression
    (25, 500, None, None, j.HIGH),  # no old data (a 100% step): the bound alone
    (3, 50, 0, 500, j.INCONCLUSIVE),  # 50 < minRequests
    (None, 500, 0, 500, j.INCONCLUSIVE),
    (math.nan, 500, 0, 500, j.INCONCLUSIVE),
    (600, 500, 0, 500, j.HIGH),  # more errors than answers (counters sampled apart): capped
])
def test_errors(k1, n1, k2, n2, result) -> None:  # type: ignore[no-untyped-def]
    v = j.judge_errors(k1, n1, k2, n2, max_rate=0.01, confidence=0.99, min_requests=100)
    assert v.result == result, v.reason


def test_the_absolute_bound_counts_answers_above_it() -> None:
    rng = np.random.default_rng(0)
    fast = binned(rng.lognormal(math.log(0.010), 0.1, 1000))  # about 10 ms
    assert j.judge_latency_bound(fast, BOUNDS, max_p99_ms=20, confidence=0.99, min_requests=100).result == j.PASS
    v = j.judge_latency_bound(fast, BOUNDS, max_p99_ms=10, confidence=0.99, min_requests=100)
    assert v.result == j.HIGH and 400 < v.figures["slower"] < 600  # about half are above 10 ms
    assert j.judge_latency_bound(fast[:1] + [0.0] * 163, BOUNDS, max_p99_ms=10, confidence=0.99,
                                 min_requests=100).result == j.INCONCLUSIVE


def _judge(rng: np.random.Generator, slowdown: float, n_new: int, n_old: int) -> str:
    new = binned(rng.lognormal(math.log(0.008 * slowdown), 0.25, n_new))
    old = binned(rng.lognormal(math.log(0.008), 0.25, n_old))
    return j.judge_latency(new, old, BOUNDS, max_ratio=1.2, min_delta_ms=1, confidence=0.99, min_requests=100).result


def test_identical_versions_are_rarely_judged_slower_and_a_50_percent_slower_one_always() -> None:
    """The false-alarm and detection rates of one check, over 500 simulated windows of a 20% canary
    (200 answers against 800), latencies lognormal around 8 ms with a 25% spread."""
    rng = np.random.default_rng(7)
    false_alarms = sum(_judge(rng, 1.0, 200, 800) == j.HIGH for _ in range(500))
    detected = sum(_judge(rng, 1.5, 200, 800) == j.HIGH for _ in range(500))
    assert false_alarms <= 2  # at most 0.4% of checks (the test's own rate is 1%, the ratio bound halves it)
    assert detected == 500


def test_a_point_estimate_alone_would_have_failed_healthy_windows() -> None:
    """Why the rank test is there: on identical versions, the p99 of the 30 answers a 20% canary gets
    exceeds 1.2 x the p99 of the other 120 in one window of eight; the verdict fails at most the
    rank test's own rate (1%)."""
    rng = np.random.default_rng(11)
    ratio_above, judged_high = 0, 0
    for _ in range(300):
        new = binned(rng.lognormal(math.log(0.008), 0.4, 30))
        old = binned(rng.lognormal(math.log(0.008), 0.4, 120))
        p_new, p_old = j.quantile(new, BOUNDS, 0.99), j.quantile(old, BOUNDS, 0.99)
        assert p_new is not None and p_old is not None
        ratio_above += p_new > 1.2 * p_old
        judged_high += j.judge_latency(new, old, BOUNDS, max_ratio=1.2, min_delta_ms=1, confidence=0.99,
                                       min_requests=20).result == j.HIGH
    assert ratio_above >= 30 and judged_high <= 3, (ratio_above, judged_high)


def test_the_paired_latency_sign_test_matches_scipy_and_reads_the_median() -> None:
    from modelserver.contract import SHADOW_RATIO_BUCKETS as R

    one = R.index(1.0)
    counts = [0.0] * (len(R) + 1)
    counts[one] = 40  # ratios in (0.917, 1]: not slower
    counts[one + 4] = 60  # ratios in (1.30, 1.41]: slower
    v = j.judge_paired_latency(counts, R, max_ratio=1.2, confidence=0.99, min_requests=50)
    assert v.figures["slowerPairs"] == 60
    assert v.figures["pValue"] == pytest.approx(stats.binomtest(60, 100, 0.5, alternative="greater").pvalue)
    assert v.result == j.PASS  # 60 of 100 is not significant at 1%
    counts[one + 4] = 160
    v = j.judge_paired_latency(counts, R, max_ratio=1.2, confidence=0.99, min_requests=50)
    assert v.result == j.HIGH and 1.3 < v.figures["medianRatio"] <= 1.42
    assert j.judge_paired_latency([0.0] * (len(R) + 1), R, max_ratio=1.2, confidence=0.99,
                                  min_requests=50).result == j.INCONCLUSIVE


@pytest.mark.parametrize(("agree", "disagree", "result"), [
    (990, 10, j.PASS), (900, 100, j.HIGH), (985, 15, j.PASS),  # 1.5% against a 1% bound: not significant
    (None, 5, j.INCONCLUSIVE), (10, 5, j.INCONCLUSIVE),
])
def test_top1_agreement(agree, disagree, result) -> None:  # type: ignore[no-untyped-def]
    assert j.judge_agreement(agree, disagree, min_agreement=0.99, confidence=0.99, min_requests=100).result == result


def test_divergence_counts_requests_above_the_bound() -> None:
    from modelserver.contract import SHADOW_DIFF_BUCKETS as D

    counts = [0.0] * (len(D) + 1)
    counts[D.index(1e-6)] = 995  # tiny float noise
    counts[D.index(1.0)] = 5
    assert j.judge_divergence(counts, D, max_divergence=0.01, confidence=0.99, min_requests=100).result == j.PASS
    counts[D.index(1.0)] = 50
    v = j.judge_divergence(counts, D, max_divergence=0.01, confidence=0.99, min_requests=100)
    assert v.result == j.HIGH and v.figures["diverging"] == 50
