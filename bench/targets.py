"""The project's server targets (listed in bench/README.md), as pure functions of the measured figures.

- peer: at concurrency 32, model-server's gRPC throughput ≥ 2× the peer's (PyTriton).
- limit: at concurrency 32, ≥ 85% of the setup's limit for that model. The limit adds the
  model's own cost to the no-op server's: 1 / (1/noop_rps + 1/inprocess_rps), where
  inprocess_rps is the in-process inferences/s at batch 32 (what a full batch of the 32
  concurrent requests costs per inference).
- latency: at concurrency 1, model-server's p50 ≤ 1.25 × (no-op p50 + in-process batch-1 call p50).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PEER_FACTOR = 2.0
LIMIT_SHARE = 0.85
LATENCY_FACTOR = 1.25
TARGET_CONCURRENCY = 32
LIMIT_BATCH = 32


@dataclass(frozen=True)
class Figures:
    """What the targets of one model need (throughputs in requests/s, latencies in µs)."""

    model: str
    noop_rps_c32: float
    noop_p50_c1_us: float
    peer_rps_c32: float
    inprocess_rps_b32: float  # inferences/s at batch 32
    inprocess_call_p50_b1_us: float
    server_rps_c32: dict[str, float]  # mode ("off" | "on") -> requests/s
    server_p50_c1_us: dict[str, float]


@dataclass(frozen=True)
class Verdict:
    model: str
    target: str  # "peer" | "limit" | "latency"
    goal: str  # human-readable goal with the computed threshold
    threshold: float
    higher_is_better: bool
    reached: dict[str, float]  # mode -> value
    complete: bool = True  # False when a reference figure is missing (a failed measurement)

    def met(self, mode: str) -> bool:
        v = self.reached.get(mode)
        if not self.complete or v is None or v <= 0:
            return False
        return v >= self.threshold if self.higher_is_better else v <= self.threshold

    @property
    def met_by(self) -> list[str]:
        return [m for m in self.reached if self.met(m)]

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["met_by"] = self.met_by
        return d


def setup_limit(noop_rps: float, inprocess_rps: float) -> float:
    """Requests/s when every request pays the no-op server's cost plus the model's per-inference
    cost, one after the other on the same cores."""
    if noop_rps <= 0 or inprocess_rps <= 0:
        return 0.0
    return 1.0 / (1.0 / noop_rps + 1.0 / inprocess_rps)


def verdicts(f: Figures) -> list[Verdict]:
    limit = setup_limit(f.noop_rps_c32, f.inprocess_rps_b32)
    latency_budget = LATENCY_FACTOR * (f.noop_p50_c1_us + f.inprocess_call_p50_b1_us)
    return [
        Verdict(
            f.model, "peer",
            f"c={TARGET_CONCURRENCY} throughput ≥ {PEER_FACTOR:g}× peer ({f.peer_rps_c32:,.0f}/s)",
            PEER_FACTOR * f.peer_rps_c32, True, dict(f.server_rps_c32), f.peer_rps_c32 > 0,
        ),
        Verdict(
            f.model, "limit",
            f"c={TARGET_CONCURRENCY} throughput ≥ {LIMIT_SHARE:.0%} of limit {limit:,.0f}/s "
            f"(no-op {f.noop_rps_c32:,.0f}/s + model {f.inprocess_rps_b32:,.0f}/s at batch {LIMIT_BATCH})",
            LIMIT_SHARE * limit, True, dict(f.server_rps_c32), limit > 0,
        ),
        Verdict(
            f.model, "latency",
            f"c=1 p50 ≤ {LATENCY_FACTOR:g}× (no-op p50 {f.noop_p50_c1_us:.0f} µs + in-process call "
            f"{f.inprocess_call_p50_b1_us:.0f} µs)",
            latency_budget, False, dict(f.server_p50_c1_us),
            f.noop_p50_c1_us > 0 and f.inprocess_call_p50_b1_us > 0,
        ),
    ]
