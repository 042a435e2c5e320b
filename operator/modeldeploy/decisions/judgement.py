"""Judging a new version against the old one from counts, as pure functions: is it worse, and is the
difference larger than the noise of the window?

A canary check compares two samples that are often small (the new version gets 5-20% of the
traffic) and always binned (latencies come from Prometheus histogram buckets). A bound applied
to point estimates alone (a p99 against 1.2 x the other p99) is decided by noise and by where
interpolation lands inside a bucket. Here each metric gets a verdict the way Kayenta (Spinnaker's
automated canary analysis) gives one: `Pass`, `High` (worse, and it matters), `Low` (better), or
`Inconclusive` (too little data to say), with the test, the figures and the reason.

- **Latency** (`judge_latency`): the Mann-Whitney U rank test on the two versions' bucket counts
  in the same window (one-sided: are the new version's latencies stochastically larger?), with the
  tie correction for values that share a bucket, by the normal approximation (both samples are at
  least `min_requests`, which a user sets well above the approximation's ~20). `High` only when
  the test is significant at `confidence` **and** the new median or p99 exceeds `max_ratio` x the
  old one **and** exceeds it by more than `min_delta_ms`: the test says the difference is real,
  the ratio and the margin say it matters. Both quantiles, because on a busy node the p99 is the
  scheduler's tail more than the model's: a version 50% slower per request moved the median by
  1.4x and the p99 by 1.07x on the local cluster.
- **Errors** (`judge_errors`): the new version's error count against `max_rate` by the exact
  one-sided binomial test, and against the old version's by Fisher's exact test (both exact, so
  they hold for the small counts a canary sees). `High` only when the rate is above `max_rate` and
  both tests are significant (only the first when the old version has no data).
- **An absolute latency bound** (`judge_latency_bound`): "p99 <= X" means at most 1% of answers
  are slower than X: the exact binomial test on the count above X.
- **Shadow** (the same requests answered by both versions): the paired time ratio by the sign test
  and its median (`judge_paired_latency`), the output divergence by the binomial test on requests
  above the bound (`judge_divergence`), top-1 agreement by the binomial test (`judge_agreement`).

Buckets are per-bucket counts (not cumulative) over `bounds` (the upper bounds, increasing; the
last count is the +Inf bucket). NaN or negative counts are treated as no data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

PASS, HIGH, LOW, INCONCLUSIVE = "Pass", "High", "Low", "Inconclusive"


@dataclass(frozen=True, slots=True)
class Verdict:
    result: str  # Pass | High | Low | Inconclusive
    test: str  # which test decided
    reason: str  # why, with the numbers
    figures: dict[str, float | None] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.result == HIGH

    def as_status(self) -> dict[str, object]:
        return {"result": self.result, "test": self.test, "reason": self.reason,
                **{k: (None if v is None else round(v, 6)) for k, v in self.figures.items()}}


# -- distributions and quantiles of binned counts --
def clean(counts: Sequence[float] | None) -> list[float] | None:
    """Counts usable for a test: None when missing, NaN or negative anywhere (no data)."""
    if counts is None:
        return None
    out = [float(c) for c in counts]
    if any(math.isnan(c) or c < 0 or math.isinf(c) for c in out):
        return None
    return out


def quantile(counts: Sequence[float], bounds: Sequence[float], q: float) -> float | None:
    """The q-quantile of binned counts, interpolated linearly inside its bucket as Prometheus'
    histogram_quantile does (the first bucket starts at 0; the +Inf bucket answers the last bound).
    None for an empty histogram."""
    total = sum(counts)
    if total <= 0 or not 0 <= q <= 1:
        return None
    rank = q * total
    acc = 0.0
    for i, c in enumerate(counts):
        if c > 0 and acc + c >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - acc) / c
        acc += c
    return bounds[-1]


# -- the tests --
def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True, slots=True)
class RankTest:
    u: float  # U of the new sample: pairs where new > old, ties counted half
    z: float
    p_greater: float  # one-sided p-value: the new sample is stochastically larger
    p_less: float


def mann_whitney(new: Sequence[float], old: Sequence[float]) -> RankTest:
    """Mann-Whitney U on two binned samples over the same buckets (values in one bucket tie), by
    the normal approximation with the tie correction and a continuity correction of 1/2."""
    n1, n2 = sum(new), sum(old)
    below = 0.0
    u = 0.0
    ties = 0.0
    for a, b in zip(new, old, strict=True):
        u += a * (below + 0.5 * b)
        below += b
        t = a + b
        ties += t**3 - t
    n = n1 + n2
    mean = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - (ties / (n * (n - 1)) if n > 1 else 0.0))
    if var <= 0:
        return RankTest(u, 0.0, 0.5, 0.5)
    sd = math.sqrt(var)
    z = (u - mean) / sd
    p_greater = normal_sf((u - mean - 0.5) / sd)
    p_less = normal_sf((mean - u - 0.5) / sd)
    return RankTest(u, z, min(1.0, p_greater), min(1.0, p_less))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(_log_comb(n, i) + i * lp + (n - i) * lq) for i in range(k, n + 1)))


def fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test, one-sided: the p-value that the first group's rate (k1 of n1) is
    higher than the second's (k2 of n2), from the hypergeometric distribution of the table."""
    total_k, total_n = k1 + k2, n1 + n2
    if total_n == 0 or total_k == 0:
        return 1.0
    denom = _log_comb(total_n, n1)
    hi = min(total_k, n1)
    return min(1.0, sum(math.exp(_log_comb(total_k, i) + _log_comb(total_n - total_k, n1 - i) - denom)
                        for i in range(k1, hi + 1) if n1 - i <= total_n - total_k))


# -- the verdicts --
def judge_latency(new: Sequence[float] | None, old: Sequence[float] | None, bounds: Sequence[float], *,
                  max_ratio: float, min_delta_ms: float, confidence: float, min_requests: int) -> Verdict:
    """The new version's latency against the old one's, from OK answers' bucket counts (seconds).
    The rank test says whether the new version is slower at all; the effect is read at the median
    (a version slower per request) and at p99 (a version slower in its tail): `High` when either
    is above `max_ratio` x the old one's and above it by more than `min_delta_ms`."""
    a, b = clean(new), clean(old)
    n1 = sum(a) if a else 0.0
    n2 = sum(b) if b else 0.0
    figures: dict[str, float | None] = {"newRequests": n1, "oldRequests": n2}
    if a is None or b is None or n1 < min_requests or n2 < min_requests:
        return Verdict(INCONCLUSIVE, "mann-whitney-u", f"too few answers to compare: new {n1:g}, old {n2:g} "
                       f"(minRequests {min_requests} of each)", figures)
    rank = mann_whitney(a, b)
    alpha = 1 - confidence
    effects = {}
    for name, q in (("P50", 0.5), ("P99", 0.99)):
        qa, qb = quantile(a, bounds, q), quantile(b, bounds, q)
        assert qa is not None and qb is not None  # both samples are non-empty
        new_ms, old_ms = qa * 1000, qb * 1000
        ratio = new_ms / old_ms if old_ms > 0 else math.inf
        figures.update({f"new{name}Ms": new_ms, f"old{name}Ms": old_ms,
                        f"ratio{name}": ratio if math.isfinite(ratio) else None})
        effects[name] = (new_ms, old_ms, ratio, ratio > max_ratio and new_ms - old_ms > min_delta_ms)
    figures.update({"maxRatio": max_ratio, "minDeltaMs": min_delta_ms, "pValue": rank.p_greater, "z": rank.z})
    text = "; ".join(f"{k.lower()} {n:.4g} ms vs {o:.4g} ms (x{r:.3g})" for k, (n, o, r, _w) in effects.items())
    text += f", bound x{max_ratio:g} and +{min_delta_ms:g} ms"
    worse = [k.lower() for k, e in effects.items() if e[3]]
    if rank.p_greater < alpha and worse:
        return Verdict(HIGH, "mann-whitney-u", f"slower ({' and '.join(worse)}): {text}, p={rank.p_greater:.2g} "
                       f"< {alpha:.2g}", figures)
    if rank.p_less < alpha and effects["P50"][0] < effects["P50"][1]:
        return Verdict(LOW, "mann-whitney-u", f"faster: {text}, p={rank.p_less:.2g}", figures)
    why = "not significant" if rank.p_greater >= alpha else "significant but within the bounds"
    return Verdict(PASS, "mann-whitney-u", f"{why}: {text}, p={rank.p_greater:.2g}", figures)


def count_above(counts: Sequence[float], bounds: Sequence[float], limit: float) -> float:
    """How many binned values exceed `limit`: those in buckets wholly above it, and the share of
    the bucket that holds it above it (linearly, as histogram_quantile interpolates)."""
    above = 0.0
    lower = 0.0
    for i, c in enumerate(counts):
        upper = bounds[i] if i < len(bounds) else math.inf
        if lower >= limit:
            above += c
        elif upper > limit and math.isfinite(upper):
            above += c * (upper - limit) / (upper - lower)
        lower = upper
    return above


def judge_latency_bound(new: Sequence[float] | None, bounds: Sequence[float], *, max_p99_ms: float,
                        confidence: float, min_requests: int) -> Verdict:
    """"p99 <= max_p99_ms": High when significantly more than 1% of answers are slower than it."""
    a = clean(new)
    n = sum(a) if a else 0.0
    if a is None or n < min_requests:
        return Verdict(INCONCLUSIVE, "binomial", f"too few answers: {n:g} (minRequests {min_requests})",
                       {"newRequests": n})
    above = count_above(a, bounds, max_p99_ms / 1000)
    p = binomial_sf(math.floor(above), int(n), 0.01)
    p99 = quantile(a, bounds, 0.99)
    figures: dict[str, float | None] = {"newRequests": n, "newP99Ms": None if p99 is None else p99 * 1000,
                                        "maxLatencyMs": max_p99_ms, "slower": above, "pValue": p}
    text = f"{above:.0f} of {n:.0f} answers slower than {max_p99_ms:g} ms (p99 allows 1%)"
    if p < 1 - confidence:
        return Verdict(HIGH, "binomial", f"{text}, p={p:.2g}", figures)
    return Verdict(PASS, "binomial", f"{text}, p={p:.2g}", figures)


# -- shadow: the same requests answered by both versions --
def judge_paired_latency(ratios: Sequence[float] | None, bounds: Sequence[float], *, max_ratio: float,
                         confidence: float, min_requests: int) -> Verdict:
    """The shadow's time over the primary's on the same inputs, per request (binned over `bounds`,
    1 among them). The sign test (is the shadow slower on more than half of the pairs?) says
    whether it is slower at all; the median ratio says by how much: High when significant and the
    median is above `max_ratio`."""
    r = clean(ratios)
    n = sum(r) if r else 0.0
    if r is None or n < min_requests:
        return Verdict(INCONCLUSIVE, "sign", f"too few pairs: {n:g} (minRequests {min_requests})", {"pairs": n})
    slower = sum(c for i, c in enumerate(r) if i > 0 and i - 1 < len(bounds) and bounds[i - 1] >= 1.0)
    p = binomial_sf(math.floor(slower), int(n), 0.5)
    median = quantile(r, bounds, 0.5)
    assert median is not None
    figures: dict[str, float | None] = {"pairs": n, "slowerPairs": slower, "medianRatio": median,
                                        "maxRatio": max_ratio, "pValue": p}
    text = (f"slower on {slower:.0f} of {n:.0f} identical requests, median x{median:.3g} "
            f"(bound x{max_ratio:g}), p={p:.2g}")
    if p < 1 - confidence and median > max_ratio:
        return Verdict(HIGH, "sign", f"slower: {text}", figures)
    return Verdict(PASS, "sign", text, figures)


def judge_divergence(diffs: Sequence[float] | None, bounds: Sequence[float], *, max_divergence: float,
                     confidence: float, min_requests: int) -> Verdict:
    """The largest absolute output difference per mirrored request: High when significantly more
    than 1% of requests differ by more than `max_divergence`."""
    d = clean(diffs)
    n = sum(d) if d else 0.0
    if d is None or n < min_requests:
        return Verdict(INCONCLUSIVE, "binomial", f"too few compared requests: {n:g} (minRequests {min_requests})",
                       {"compared": n})
    above = count_above(d, bounds, max_divergence)
    p = binomial_sf(math.floor(above), int(n), 0.01)
    p99 = quantile(d, bounds, 0.99)
    figures: dict[str, float | None] = {"compared": n, "diverging": above, "p99Diff": p99,
                                        "maxDivergence": max_divergence, "pValue": p}
    text = f"{above:.0f} of {n:.0f} requests differ by more than {max_divergence:g} (1% allowed), p={p:.2g}"
    return Verdict(HIGH if p < 1 - confidence else PASS, "binomial", text, figures)


def judge_agreement(agree: float | None, disagree: float | None, *, min_agreement: float, confidence: float,
                    min_requests: int) -> Verdict:
    """Rows whose top-1 class both versions agree on: High when the disagreements are
    significantly more than `1 - min_agreement` of the rows."""
    a, b = _count(agree), _count(disagree)
    if a is None or b is None or a + b < min_requests:
        return Verdict(INCONCLUSIVE, "binomial", f"too few rows: {(a or 0) + (b or 0)} (minRequests {min_requests})",
                       {"rows": (a or 0) + (b or 0)})
    n = a + b
    p = binomial_sf(b, n, 1 - min_agreement)
    figures: dict[str, float | None] = {"rows": n, "agreement": a / n, "minAgreement": min_agreement, "pValue": p}
    text = f"top-1 agreement {a / n:.2%} of {n} rows (bound {min_agreement:.2%}), p={p:.2g}"
    if a / n < min_agreement and p < 1 - confidence:
        return Verdict(HIGH, "binomial", f"disagrees: {text}", figures)
    return Verdict(PASS, "binomial", text, figures)


def judge_errors(new_errors: float | None, new_requests: float | None, old_errors: float | None,
                 old_requests: float | None, *, max_rate: float, confidence: float, min_requests: int) -> Verdict:
    """The new version's errors (every answer but OK) against `max_rate` and against the old version."""
    k1, n1 = _count(new_errors), _count(new_requests)
    k2, n2 = _count(old_errors), _count(old_requests)
    if k1 is None or n1 is None or n1 < min_requests:
        return Verdict(INCONCLUSIVE, "binomial", f"too few answers: {n1 or 0} (minRequests {min_requests})",
                       {"newRequests": n1})
    k1 = min(k1, n1)
    rate = k1 / n1
    alpha = 1 - confidence
    p_bound = binomial_sf(k1, n1, max_rate)
    has_old = k2 is not None and n2 is not None and n2 > 0
    p_old = fisher_greater(k1, n1, min(k2, n2), n2) if has_old else None  # type: ignore[arg-type, type-var]
    figures: dict[str, float | None] = {
        "newRequests": n1, "newErrors": k1, "newRate": rate, "maxRate": max_rate, "pValue": p_bound,
        "oldRequests": n2, "oldErrors": k2, "oldRate": (k2 / n2) if has_old else None, "pValueVsOld": p_old}  # type: ignore[operator]
    text = f"{k1} errors in {n1} answers ({rate:.2%}, bound {max_rate:.2%})"
    if has_old:
        text += f", old version {k2} in {n2}"
    if rate > max_rate and p_bound < alpha and (p_old is None or p_old < alpha):
        test = "binomial+fisher" if p_old is not None else "binomial"
        return Verdict(HIGH, test, f"more errors: {text}, p={max(p_bound, p_old or 0):.2g} < {alpha:.2g}", figures)
    return Verdict(PASS, "binomial+fisher" if has_old else "binomial", f"{text}, p={p_bound:.2g}", figures)


def _count(v: float | None) -> int | None:
    if v is None or math.isnan(v) or math.isinf(v) or v < 0:
        return None
    return int(round(v))
