"""json_text.loads, the REST front end's parser for large bodies: the same values and the same
refusals as json.loads, in bounded steps, and a depth limit; release() takes a value apart."""

from __future__ import annotations

import json
import random

import pytest
from modelserver.protocol import json_text


def _doc(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 5 else 5)
    if kind == 0:
        return rng.choice([0, -1, 7, 10**30, -(2**63)])
    if kind == 1:
        return rng.choice([0.5, -1e-300, 1.5e300, 3.0, -0.0])
    if kind == 2:
        return rng.choice(["", "a", 'q"uote', "back\\slash", "é\u20ac", "\ud800", "[1, 2]", "]"])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return [rng.random() for _ in range(rng.randrange(0, 40))]
    if kind in (5, 6):
        return [_doc(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    if kind == 7:
        return [[rng.randrange(-5, 5) for _ in range(3)] for _ in range(rng.randrange(0, 50))]
    return {f"k{i}": _doc(rng, depth + 1) for i in range(rng.randrange(0, 4))}


def test_same_values_as_json_loads_on_random_documents() -> None:
    rng = random.Random(7)
    for i in range(400):
        doc = {"instances": _doc(rng)}
        text = json.dumps(doc, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
        assert json_text.loads(text) == json.loads(text), text
        for data in (text.encode("utf-8", "surrogatepass"), text.encode("utf-16", "surrogatepass")):
            assert json_text.loads(data) == json.loads(data), i


def test_long_arrays_are_decoded_in_runs_with_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_text, "RUN_CHARS", 64)  # runs end mid-array, at a comma or inside a row
    rng = random.Random(3)
    rows = [[rng.uniform(-1, 1) for _ in range(rng.randrange(1, 9))] for _ in range(300)]
    for doc in ({"instances": rows}, {"inputs": [rows, rows]}, {"instances": [[[1, 2], [3, 4]]] * 50},
                {"instances": [1.5] * 1000 + ["x", None, {"b64": "AA=="}] + [2] * 50},
                {"instances": [[1e-7, -2E+3, 0, -0.0, 12345678901234567890]] * 40}):
        text = json.dumps(doc)
        assert json_text.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", [
    "", " ", "{", "[", "[1,]", "[1 2]", "[01]", "[1,,2]", "[-]", "[1.]", "[.5]", '{"a" 1}', '{"a": 1,}', "{1: 2}",
    "[1]]", "[[1]", "[[1],]", "[1e]", "[+1]", '["a\x01"]', "[truex]", "1 2", "\ufeff[1]", "[\"\\x\"]", "nul",
    '{"a": [1, 2', "[1, 2" + ", 3" * 50, "[[1, 2], [3, 4]" + ", [5]" * 50,
])
def test_refuses_what_json_loads_refuses(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_text, "RUN_CHARS", 32)
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        json_text.loads(text)


def test_values_nested_deeper_than_the_limit_are_refused_without_recursion() -> None:
    ok = "[" * json_text.MAX_DEPTH + "1" + "]" * json_text.MAX_DEPTH
    assert json_text.loads(ok) == json.loads(ok)
    for deep in ("[" * 100_000 + "1" + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000,
                 "[" * (json_text.MAX_DEPTH + 1) + "]" * (json_text.MAX_DEPTH + 1)):
        with pytest.raises(json_text.JsonDepthError, match="nested too deeply"):
            json_text.loads(deep)


def test_release_empties_every_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_text, "RELEASE_CHUNK", 4)
    inner = [[1.0] * 10 for _ in range(30)]
    rows = list(inner)
    big_row = list(range(20))
    doc = {"instances": inner, "inputs": {"x": [big_row]}, "s": "keep"}
    json_text.release(doc)
    assert doc == {} and inner == [] and big_row == [] and all(row == [] for row in rows)
