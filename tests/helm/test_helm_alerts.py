"""The PrometheusRule's alerts, evaluated by Prometheus's own rule engine (`promtool test rules`).

The rules come from the rendered chart; synthetic series in TF Serving's metric names (the ones
model-server exports) drive them over simulated time: p99 latency above a per-model threshold for
5 minutes, error rate above 1% for 2 minutes, and nothing for healthy models or before `for:` ends.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from chart_support import FULL_VALUES, objects, one
from support import PROMETHEUS_HINT, program

LATENCY = ":tensorflow:serving:request_latency_bucket"
COUNT = ":tensorflow:serving:request_count"
BUCKETS_US = ["100000", "250000", "500000", "1000000", "+Inf"]


def _rule_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = one(objects(values), "PrometheusRule")["spec"]["groups"]
    return groups


def _latency_series(model: str, bucket_index: int, per_minute: int = 60) -> list[dict[str, str]]:
    """Every request of `model` lands in bucket `bucket_index` (cumulative buckets)."""
    return [
        {
            "series": f'{LATENCY}{{namespace="ml",model_name="{model}",API="predict",entrypoint="GRPC",le="{le}"}}',
            "values": f"0+{per_minute if i >= bucket_index else 0}x30",
        }
        for i, le in enumerate(BUCKETS_US)
    ]


def _count_series(model: str, ok_per_minute: int, errors_per_minute: int) -> list[dict[str, str]]:
    return [
        {
            "series": f'{COUNT}{{namespace="ml",model_name="{model}",status="OK"}}',
            "values": f"0+{ok_per_minute}x30",
        },
        {
            "series": f'{COUNT}{{namespace="ml",model_name="{model}",status="INVALID_ARGUMENT"}}',
            "values": f"0+{errors_per_minute}x30",
        },
    ]


def _alerts(models: dict[str, str | None], severity: str) -> list[dict[str, Any]]:
    """Expected firing alerts: model -> its latency threshold label (None for the error-rate alert)."""
    out = []
    for model, threshold in models.items():
        labels = {"severity": severity, "namespace": "ml", "model_name": model}
        if threshold is not None:
            labels["threshold_seconds"] = threshold
        out.append({"exp_labels": labels})
    return out


def _promtool_test(tmp_path: Path, groups: list[dict[str, Any]], tests: list[dict[str, Any]]) -> None:
    # Annotations are checked by `promtool check rules` below; here only expressions, thresholds and
    # `for:` durations are under test, so they are dropped to keep expectations to labels.
    stripped = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in groups
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": stripped}))
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    proc = subprocess.run(
        [program("promtool", PROMETHEUS_HINT), "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_and_annotation_templates_are_valid(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": _rule_groups(FULL_VALUES)}))
    proc = subprocess.run(
        [program("promtool", PROMETHEUS_HINT), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "FAILED" not in output, output
    assert "SUCCESS: 6 rules found" in output


def test_p99_latency_alert_uses_per_model_thresholds_and_waits_five_minutes(tmp_path: Path) -> None:
    # FULL_VALUES: default 0.25 s; classifier 0.1 s; ranker.v2 1.5 s.
    series = (
        _latency_series("slow", 3)  # p99 ~0.995 s > 0.25 s default
        + _latency_series("fast", 0)  # p99 ~0.099 s
        + _latency_series("classifier", 1)  # p99 ~0.2485 s: under the default, over its own 0.1 s
        + _latency_series("ranker.v2", 3)  # p99 ~0.995 s: over the default, under its own 1.5 s
        + _latency_series("rankerXv2", 3)  # the override's "." is literal: this one has the default
    )
    name = "ModelLatencyP99High"
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {
                    "expr": 'round(modeldeploy:request_latency_seconds:p99_5m{model_name="classifier"}, 0.0001)',
                    "eval_time": "10m",
                    "exp_samples": [{"labels": '{namespace="ml",model_name="classifier"}', "value": 0.2485}],
                }
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": name, "exp_alerts": []},  # pending, not firing yet
                {
                    "eval_time": "12m",
                    "alertname": name,
                    "exp_alerts": _alerts(
                        {"classifier": "0.1", "rankerXv2": "0.25", "slow": "0.25"}, "warning"
                    ),
                },
            ],
        }
    ]
    _promtool_test(tmp_path, _rule_groups(FULL_VALUES), tests)


def test_error_rate_alert_fires_above_one_percent_for_two_minutes(tmp_path: Path) -> None:
    series = (
        _count_series("flaky", ok_per_minute=980, errors_per_minute=20)  # 2 %
        + _count_series("steady", ok_per_minute=995, errors_per_minute=5)  # 0.5 %
        + _count_series("perfect", ok_per_minute=1000, errors_per_minute=0)
    )
    name = "ModelErrorRateHigh"
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": name, "exp_alerts": []},
                {"eval_time": "6m", "alertname": name, "exp_alerts": _alerts({"flaky": None}, "critical")},
            ],
        }
    ]
    _promtool_test(tmp_path, _rule_groups({"monitoring": {"prometheusRule": {"enabled": True}}}), tests)


def test_default_thresholds_without_overrides(tmp_path: Path) -> None:
    groups = _rule_groups({"monitoring": {"prometheusRule": {"enabled": True}}})
    exprs = [r["expr"] for g in groups for r in g["rules"] if r.get("alert") == "ModelLatencyP99High"]
    assert exprs == ["modeldeploy:request_latency_seconds:p99_5m > 0.5"]
    series = _latency_series("slow", 3) + _latency_series("ok", 2)  # ~0.995 s and ~0.4975 s
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {
                    "eval_time": "12m",
                    "alertname": "ModelLatencyP99High",
                    "exp_alerts": _alerts({"slow": "0.5"}, "warning"),
                }
            ],
        }
    ]
    _promtool_test(tmp_path, groups, tests)
