"""Request traces: sampling, the JSON lines, and `modeldeploy trace-summary`."""

from __future__ import annotations

import io
import json
import time

import pytest
from modeldeploy import cli
from modeldeploy.cli.trace_summary import phases, render, summarize
from modelserver.core.request_context import RequestContext
from modelserver.observability.tracing import TraceWriter, trace_record


def _ctx(model="hp", protocol="grpc", queued=True) -> RequestContext:
    c = RequestContext(protocol=protocol, api="predict", model=model, version=3, signature="serving_default")
    t = c.t_receive
    c.t_queue_start = t + 0.001 if queued else None
    c.t_compute_start = t + 0.003
    c.t_compute_end = t + 0.007
    c.t_send = t + 0.008
    c.batch_size = 4
    return c


def test_trace_record_has_ids_and_wall_clock_timestamps():
    c = _ctx()
    before = time.time()
    rec = trace_record(c, time.time() - time.perf_counter())
    assert rec["request_id"] == c.request_id
    assert (rec["model"], rec["version"], rec["protocol"], rec["api"]) == ("hp", 3, "grpc", "predict")
    assert abs(rec["receive"] - before) < 5
    assert rec["queue_start"] - rec["receive"] == pytest.approx(0.001, abs=2e-6)
    assert rec["send"] - rec["compute_end"] == pytest.approx(0.001, abs=2e-6)


def test_writer_samples_every_nth_request(tmp_path):
    path = tmp_path / "trace.jsonl"
    w = TraceWriter(path, 3)
    ctxs = [_ctx() for _ in range(10)]
    for c in ctxs:
        w.finish(c)
    w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["request_id"] for x in lines] == [ctxs[i].request_id for i in (2, 5, 8)]
    w.finish(_ctx())  # after close: ignored, no crash


def test_writer_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        TraceWriter(tmp_path / "t", 0)
    with pytest.raises(ValueError, match="cannot open --trace_file"):
        TraceWriter(tmp_path / "no" / "such" / "dir", 1)


def test_phases_and_summary():
    rec = trace_record(_ctx(), 0.0)
    p, total = phases(rec)
    assert p["receive"] == pytest.approx(0.001, abs=2e-6)
    assert p["queue"] == pytest.approx(0.002, abs=2e-6)
    assert p["compute"] == pytest.approx(0.004, abs=2e-6)
    assert p["send"] == pytest.approx(0.001, abs=2e-6)
    assert total == pytest.approx(0.008, abs=2e-6)
    unbatched = trace_record(_ctx(queued=False), 0.0)
    p, _ = phases(unbatched)
    assert p["queue"] == 0 and p["receive"] == pytest.approx(0.003, abs=2e-6)
    lines = [json.dumps(trace_record(_ctx(), 0.0)), json.dumps(trace_record(_ctx(protocol="rest"), 0.0)),
             "not json", "[1, 2]", json.dumps({"model": "x"}), ""]
    groups, bad = summarize(lines)
    assert bad == 3
    assert set(groups) == {("hp", "grpc"), ("hp", "rest")}
    text = render(groups, bad)
    assert "receive_ms" in text and "3 line(s) skipped" in text
    row = next(line for line in text.splitlines() if line.startswith("hp") and "grpc" in line)
    assert row.split()[2:9] == ["1", "0", "1.000", "2.000", "4.000", "1.000", "8.000"]


def test_trace_summary_command(tmp_path, capsys):
    path = tmp_path / "trace.jsonl"
    w = TraceWriter(path, 1)
    for c in [_ctx("a"), _ctx("a"), _ctx("b", "rest")]:
        w.finish(c)
    w.close()
    assert cli.main(["trace-summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "a    " in out.splitlines()[1] and " 2 " in out.splitlines()[1]
    assert out.splitlines()[2].startswith("b")
    assert cli.main(["trace-summary", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_empty_trace_file(tmp_path):
    from argparse import Namespace

    from modeldeploy.cli.trace_summary import run

    p = tmp_path / "empty"
    p.write_text("")
    buf = io.StringIO()
    assert run(Namespace(file=str(p)), out=buf) == 0
    assert "no traced requests" in buf.getvalue()
