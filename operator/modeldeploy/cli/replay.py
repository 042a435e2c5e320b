"""`modeldeploy replay EVENTS --url URL`: sends the requests of a payload log to a model server
again, e.g. to check a new version against yesterday's traffic.

EVENTS holds one CloudEvent per line in CloudEvents' JSON format (the attributes, and `data` or
`data_base64`), as a sink receiving model-server's binary-mode events writes them (`ce-` dropped
from the header names). Request events of the REST protocols (`ce-protocol` rest or v2_rest,
`application/json`) are POSTed to `URL` as they were sent, to their model, or `--model`, and to
`--version` or `--label` when given (else where the model's traffic split sends them). gRPC events
carry protobuf messages and are skipped (counted). When the log holds the answer (a response event
with the same request id and source), the new answer is compared with it. Prints one summary line:
sent, ok, failed, same, different (answers unlike the logged ones), without (no logged answer),
skipped. No TensorFlow here: plain JSON over HTTP.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

REQUEST, RESPONSE = "org.modeldeploy.inference.request", "org.modeldeploy.inference.response"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("events", help="a JSON-lines file of CloudEvents (- for stdin)")
    parser.add_argument("--url", required=True, help="the model server's REST address, e.g. http://localhost:8501")
    parser.add_argument("--model", help="send to this model (default: each event's ce-model)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--version", type=int, help="to this version")
    target.add_argument("--label", help="to this version label")
    parser.add_argument("--limit", type=int, default=0, help="at most this many requests (0: all)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")


def read_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        line = line.strip()
        if line:
            yield json.loads(line)


def target_path(event: dict[str, Any], model: str | None, version: int | None, label: str | None) -> str | None:
    """The REST path to send a logged request to (pure); None for an event that cannot be replayed."""
    name = model or urllib.parse.unquote(event.get("model", ""))  # header values arrive percent-encoded
    api, protocol = event.get("api", ""), event.get("protocol", "")
    if not name:
        return None
    quoted = urllib.parse.quote(name, safe="")
    if protocol == "rest" and api in ("predict", "classify", "regress"):
        where = f"/versions/{version}" if version is not None else f"/labels/{urllib.parse.quote(label)}" if label else ""
        return f"/v1/models/{quoted}{where}:{api}"
    if protocol == "v2_rest" and api == "predict":  # a v2 version may be a label's name
        where = f"/versions/{version}" if version is not None else f"/versions/{urllib.parse.quote(label)}" if label else ""
        return f"/v2/models/{quoted}{where}/infer"
    return None


def _post(url: str, data: bytes, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own URL
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


def replay(events: Iterable[dict[str, Any]], args: argparse.Namespace) -> Counter[str]:
    events = list(events)
    answers = {(e.get("source"), e.get("requestid")): e.get("data") for e in events
               if e.get("type") == RESPONSE and "data" in e}
    counts: Counter[str] = Counter()
    for event in events:
        if event.get("type") != REQUEST:
            continue
        path = target_path(event, args.model, args.version, args.label)
        if path is None or "data" not in event:
            counts["skipped"] += 1
            continue
        if args.limit and counts["sent"] >= args.limit:
            break
        counts["sent"] += 1
        status, body = _post(args.url.rstrip("/") + path, json.dumps(event["data"]).encode(), args.timeout)
        if status != 200:
            counts["failed"] += 1
            continue
        counts["ok"] += 1
        logged = answers.get((event.get("source"), event.get("requestid")))
        if logged is None:
            counts["without"] += 1
        else:
            counts["same" if json.loads(body) == logged else "different"] += 1
    return counts


def run(args: argparse.Namespace) -> int:
    if args.events == "-":
        counts = replay(read_events(sys.stdin), args)
    else:
        with open(args.events, encoding="utf-8") as f:
            counts = replay(read_events(f), args)
    print(" ".join(f"{k} {counts[k]}" for k in ("sent", "ok", "failed", "same", "different", "without", "skipped")))
    return 1 if counts["failed"] else 0
