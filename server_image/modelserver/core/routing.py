"""Traffic splitting by version label: the routing table, as pure data and pure functions.

A routing document says, per model, where its labels point and how the requests that name
neither a version nor a label are shared among labels:

    {"generation": 7,
     "models": {"classifier": {"labels": {"stable": 3, "canary": 4},
                               "weights": {"stable": 90, "canary": 10}}}}

It reaches the server in a file of our own beside TF Serving's model config
(`--routing_config_file`, polled with the model config, so TF Serving's files stay TF Serving's)
and through the admin port (admin.py), which the operator uses to make a change live on every pod
at once. `generation` orders documents: one older than the document in force is refused, so a
late file can never undo a newer push. A model listed here has its labels owned by the routing
document (a model config reload leaves them alone); a model not listed keeps TF Serving's
behaviour (labels from the model config, unlabelled requests to the latest version).

Choosing a label: with a routing key (HTTP `X-Model-Route-Key`, gRPC metadata
`x-model-route-key`) a hash of the key picks a bucket, so one key keeps one label while weights
stay put and keys spread by the weights; buckets are laid out in the document's label order
(stable first, canary last), so raising the canary's weight moves stable keys to the canary and
never the canary's keys back. Without a key the choice is weighted random.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelserver.config.files import parse_json, read_text
from modelserver.core.errors import invalid_argument

MAX_WEIGHT = 1_000_000
INT64_MAX = 2**63 - 1  # generations and versions are int64 (as metadata.generation and TF Serving versions)
# A label travels in gRPC metadata and HTTP headers: ASCII letters, digits, '_', '.', '-' (a
# superset of the operator's versionLabels keys).
LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True, slots=True)
class Shadow:
    """Mirror `percent` % of the requests the `source` label answers to the `label`'s version, after
    answering them (the shadow's answers are compared and discarded: core/shadow.py)."""

    label: str
    percent: float
    source: str = "stable"


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """One model's labels and split (weights in label order; `cumulative` for the choice)."""

    labels: Mapping[str, int]
    weights: tuple[tuple[str, int], ...] = ()
    cumulative: tuple[int, ...] = ()
    shadow: Shadow | None = None

    @property
    def total(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": dict(self.labels)}
        if self.weights:
            out["weights"] = dict(self.weights)
        if self.shadow is not None:
            out["shadow"] = {"label": self.shadow.label, "percent": self.shadow.percent, "source": self.shadow.source}
        return out


@dataclass(frozen=True, slots=True)
class RoutingTable:
    generation: int
    models: Mapping[str, ModelRoute]

    def as_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "models": {n: r.as_json() for n, r in sorted(self.models.items())}}


EMPTY = RoutingTable(-1, {})


def make_route(labels: Mapping[str, int], weights: Mapping[str, int] | list[tuple[str, int]],
               shadow: Shadow | None = None) -> ModelRoute:
    pairs = tuple((k, int(v)) for k, v in (weights.items() if isinstance(weights, Mapping) else weights) if v > 0)
    cumulative: list[int] = []
    for _, w in pairs:
        cumulative.append((cumulative[-1] if cumulative else 0) + w)
    return ModelRoute(dict(labels), pairs, tuple(cumulative), shadow)


def parse_table(doc: Any, source: str = "routing table") -> RoutingTable:
    """A routing document (parsed JSON) as a RoutingTable; INVALID_ARGUMENT naming the problem."""
    def bad(msg: str) -> Exception:
        return invalid_argument(f"{source}: {msg}")

    if not isinstance(doc, dict) or set(doc) - {"generation", "models"}:
        raise bad('expected an object with "generation" and "models"')
    gen = doc.get("generation", 0)
    if not isinstance(gen, int) or isinstance(gen, bool) or not 0 <= gen <= INT64_MAX:
        raise bad(f'"generation" must be an integer from 0 to {INT64_MAX}')
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise bad('"models" must be an object')
    out: dict[str, ModelRoute] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict) or set(entry) - {"labels", "weights", "shadow"}:
            raise bad(f'model {name!r}: expected an object with "labels", "weights" and optionally "shadow"')
        labels = entry.get("labels", {})
        weights = entry.get("weights", {})
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and LABEL_NAME.fullmatch(k) and isinstance(v, int) and not isinstance(v, bool)
                and 0 < v <= INT64_MAX for k, v in labels.items()):
            raise bad(f"model {name!r}: labels must map label names ({LABEL_NAME.pattern}) to versions > 0")
        if not isinstance(weights, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_WEIGHT for v in weights.values()):
            raise bad(f"model {name!r}: weights must map labels to integers from 0 to {MAX_WEIGHT}")
        unknown = sorted(set(weights) - set(labels))
        if unknown:
            raise bad(f"model {name!r}: weights name labels that the table does not define: {', '.join(unknown)}")
        if weights and not any(weights.values()):
            raise bad(f"model {name!r}: at least one weight must be positive")
        out[name] = make_route(labels, list(weights.items()), _shadow(entry.get("shadow"), labels, name, bad))
    return RoutingTable(gen, out)


def _shadow(doc: Any, labels: Mapping[str, int], name: str, bad: Any) -> Shadow | None:
    if doc is None:
        return None
    if not isinstance(doc, dict) or set(doc) - {"label", "percent", "source"} or "label" not in doc:
        raise bad(f'model {name!r}: "shadow" must be an object with "label", "percent" and optionally "source"')
    label, source, percent = doc["label"], doc.get("source", "stable"), doc.get("percent", 0)
    if label not in labels or source not in labels:
        raise bad(f"model {name!r}: the shadow's labels must be labels of the table")
    if not isinstance(percent, int | float) or isinstance(percent, bool) or not 0 <= percent <= 100:
        raise bad(f"model {name!r}: shadow percent must be a number from 0 to 100")
    return Shadow(str(label), float(percent), str(source))


def bucket(key: bytes, total: int) -> int:
    """A key's bucket in [0, total): stable across processes and restarts (not Python's hash)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % total


def choose(route: ModelRoute, key: bytes | None, rng: random.Random | None = None) -> str | None:
    """The label an unlabelled request goes to: by the key's bucket, or weighted random; None
    when the route has no split."""
    total = route.total
    if not total:
        return None
    point = bucket(key, total) if key is not None else int((rng or _RNG).random() * total)
    return route.weights[bisect.bisect_right(route.cumulative, point)][0]


_RNG = random.Random()


def load_table(path: str) -> RoutingTable:
    """`--routing_config_file`: a routing document as JSON. ConfigError when the file cannot be
    read or is not JSON, INVALID_ARGUMENT (parse_table) when its table is wrong; the caller
    reports either."""
    return table_from_text(read_text(path, "routing config file"), path)


def table_from_text(text: str, path: str) -> RoutingTable:
    """The routing file's text (read once by the caller, who keeps it) as a RoutingTable."""
    return parse_table(parse_json(text, "routing config file", path), f"routing config file {path}")
