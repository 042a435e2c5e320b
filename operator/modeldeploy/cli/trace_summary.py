"""`modeldeploy trace-summary FILE`: the average time per phase of the requests in a model-server
trace file (`--trace_file`), per model and protocol.

Phases: receive (received → queued, or → computing when not batched: parsing and validation),
queue (waiting for a batch), compute (the model call of the request's batch), send (computed →
answered: building and sending the response). No TensorFlow here: plain JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

PHASES = ("receive", "queue", "compute", "send")


@dataclass
class Summary:
    count: int = 0
    errors: int = 0
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    total: float = 0.0
    batch_sizes: int = 0

    def add(self, phases: dict[str, float], total: float, ok: bool, batch_size: int) -> None:
        self.count += 1
        self.errors += 0 if ok else 1
        for k, v in phases.items():
            self.totals[k] += v
        self.total += total
        self.batch_sizes += batch_size


def phases(rec: dict[str, Any]) -> tuple[dict[str, float], float] | None:
    """Seconds per phase for one trace record (None when it lacks receive or send)."""
    r, s = rec.get("receive"), rec.get("send")
    if not isinstance(r, int | float) or not isinstance(s, int | float):
        return None
    q, c0, c1 = rec.get("queue_start"), rec.get("compute_start"), rec.get("compute_end")
    out = dict.fromkeys(PHASES, 0.0)
    if c0 is None or c1 is None:  # never computed (an error before the model, or metadata)
        out["receive"] = s - r
        return out, s - r
    start_q = q if q is not None else c0
    out["receive"] = start_q - r
    out["queue"] = c0 - start_q
    out["compute"] = c1 - c0
    out["send"] = s - c1
    return out, s - r


def summarize(lines: Iterable[str]) -> tuple[dict[tuple[str, str], Summary], int]:
    """Per (model, protocol) summaries, and the number of lines that could not be used."""
    groups: dict[tuple[str, str], Summary] = {}
    bad = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(rec, dict):
            bad += 1
            continue
        p = phases(rec)
        if p is None:
            bad += 1
            continue
        key = (str(rec.get("model") or "-"), str(rec.get("protocol") or "-"))
        groups.setdefault(key, Summary()).add(p[0], p[1], rec.get("status", "OK") == "OK",
                                              int(rec.get("batch_size") or 0))
    return groups, bad


def render(groups: dict[tuple[str, str], Summary], bad: int) -> str:
    header = ["model", "protocol", "requests", "errors", "receive_ms", "queue_ms", "compute_ms", "send_ms",
              "total_ms", "avg_batch"]
    rows = [header]
    for (model, proto), s in sorted(groups.items()):
        n = s.count
        rows.append([model, proto, str(n), str(s.errors)]
                    + [f"{s.totals[k] / n * 1e3:.3f}" for k in PHASES]
                    + [f"{s.total / n * 1e3:.3f}", f"{s.batch_sizes / n:.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)
    if not groups:
        text += "\n(no traced requests)"
    if bad:
        text += f"\n{bad} line(s) skipped (not trace records)"
    return text + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="trace file written by model-server --trace_file (JSON lines); - for stdin")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        if args.file == "-":
            groups, bad = summarize(sys.stdin)
        else:
            with open(args.file, encoding="utf-8") as f:
                groups, bad = summarize(f)
    except OSError as e:
        print(f"modeldeploy trace-summary: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    out.write(render(groups, bad))
    return 0
