"""hookline's alert rules (``helm/hookline/files/alerts.yaml``) with the real ``promtool``
and the real ``helm``: the file is valid and lint-clean, every alert fires on series shaped
like hookline's when it should and stays quiet when it should not (``tests/alerts/*.yaml``,
a positive and a negative case each), the chart's PrometheusRule is that very file, and the
receiver's 5xx reasons the ratio counts are the ones its code answers with.

That the rules only name series hookline serves, with the labels they match on, is checked
against running processes in ``tests/kubernetes/test_alert_series.py``.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers import REPO, tool_binary
from tests.promql import Matcher, dashboard_queries, select

CHART = REPO / "helm" / "hookline"
RULES = CHART / "files" / "alerts.yaml"
UNIT_TESTS = sorted((REPO / "tests" / "alerts").glob("*.yaml"))
# helm from tools/ has no Kubernetes version of its own (tools/README.md): the pinned one.
KUBE_VERSION = re.search(
    r"^\s*k8s\.io/kubernetes (v\S+)", (REPO / "tools" / "kube" / "go.mod").read_text(), re.M
).group(1)  # type: ignore[union-attr]


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool_binary("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def test_promtool_is_the_pinned_prometheus() -> None:
    pin = re.search(
        r"github\.com/prometheus/prometheus v0\.(\d)(\d\d)\.(\d+)",
        (REPO / "tools" / "prometheus" / "go.mod").read_text(),
    )
    assert pin is not None
    release = f"{pin[1]}.{int(pin[2])}.{pin[3]}"
    done = promtool("--version")
    assert done.stdout.startswith(f"promtool, version {release} "), done.stdout


def test_rules_file_is_valid_and_lint_clean() -> None:
    done = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout, done.stdout


def test_every_alert_fires_when_it_should_and_not_otherwise() -> None:
    done = promtool("test", "rules", *(str(p) for p in UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(UNIT_TESTS), done.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == [str(Path("..") / ".." / RULES.relative_to(REPO))], path
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert set(alerts()) - firing == set(), "alerts never shown firing"
    assert set(alerts()) - quiet == set(), "alerts never shown quiet"


def test_every_alert_tells_the_on_call_engineer_what_to_run() -> None:
    operating = (REPO / "docs" / "operating.md").read_text()
    for name, rule in alerts().items():
        annotations = rule["annotations"]
        assert annotations["summary"] and "\n" not in annotations["summary"], name
        # a command to run, in backquotes: hookline ..., kubectl ..., a query
        assert (
            "`hookline " in annotations["description"] or "`kubectl " in annotations["description"]
        ), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        anchor = annotations["runbook_url"].rpartition("#")[2]
        assert anchor == name.lower(), name
        assert f"\n### {name}\n" in operating, f"docs/operating.md has no section {name}"
        # the section shows the rule's expression as it is (the layout aside)
        section = operating.split(f"\n### {name}\n", 1)[1]
        shown = section.split("```promql\n", 1)[1].split("```", 1)[0]
        shown = "".join(line.partition("#")[0] for line in shown.splitlines())
        assert "".join(shown.split()) == "".join(rule["expr"].split()), name


def test_dashboard_queries_of_the_docs_are_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert queries
    recorded = [{"record": f"hookline:dashboard:{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    for q in queries:
        assert all(m.startswith("hookline_") for m in select(q).metrics), q


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: a threshold moved past what the series reach is caught."""
    broken = RULES.read_text().replace(
        "max by (pool) (hookline_pool_oldest_unread_age_seconds) > 120",
        "max by (pool) (hookline_pool_oldest_unread_age_seconds) > 1200",
    )
    assert broken != RULES.read_text()
    folder = tmp_path / "tests" / "alerts"
    folder.mkdir(parents=True)
    (tmp_path / RULES.relative_to(REPO)).parent.mkdir(parents=True)
    (tmp_path / RULES.relative_to(REPO)).write_text(broken)
    test = folder / "pools.yaml"
    test.write_text((REPO / "tests" / "alerts" / "pools.yaml").read_text())
    done = promtool("test", "rules", str(test), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "alertname: HooklinePoolLagging" in done.stdout + done.stderr
    assert "got:[]" in (done.stdout + done.stderr).replace(" ", "").replace("\n", "")


# -- the PrometheusRule of the chart


def template(*args: str) -> list[dict[str, Any]]:
    command = [tool_binary("helm"), "template", "hookline", str(CHART), "-n", "hookline"]
    done = subprocess.run(
        [*command, "--kube-version", KUBE_VERSION, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_chart_renders_the_rules_file_as_its_prometheus_rule_when_asked() -> None:
    docs = template(
        "--set", "alerts.prometheusRule.enabled=true",
        "--set", "alerts.prometheusRule.labels.release=prometheus",
    )  # fmt: skip
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "hookline"
    assert rule["metadata"]["namespace"] == "hookline"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hookline"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_chart_renders_no_prometheus_rule_by_default() -> None:
    assert [d["kind"] for d in template() if d["kind"] == "PrometheusRule"] == []


# -- what the expressions read


def test_the_selector_reader_tells_metric_names_from_functions_labels_and_keywords() -> None:
    s = select(
        'sum by (pool, reason) (rate(a_total{reason=~"x|y", job!="j"}[5m] offset 1m))\n'
        "/ on (pool) group_left (endpoint) max without (instance) (b) > bool 0.05\n"
        "unless count(c{le='0.5'}) and histogram_quantile(0.9, d_bucket) or vector(1)"
    )
    assert set(s.metrics) == {"a_total", "b", "c", "d_bucket"}
    assert s.metrics["a_total"] == [Matcher("reason", "=~", "x|y"), Matcher("job", "!=", "j")]
    assert s.metrics["c"] == [Matcher("le", "=", "0.5")]
    assert s.grouping == {"pool", "reason", "endpoint", "instance"}


def test_receiver_5xx_reasons_in_the_ratio_are_those_the_receiver_answers_with() -> None:
    """The receiver counts its 503s in ``hookline_ingest_errors_total`` by reason; every call
    in its code that answers a 5xx with a fixed reason (``refuse(503, "...")``,
    ``_raw_error(503, "...")``) must be in the rule's regex, and nothing else."""
    answered: set[str] = set()
    for path in (REPO / "src" / "hookline" / "receiver").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and len(node.args) >= 2:
                status, code = node.args[0], node.args[1]
                if (
                    isinstance(status, ast.Constant)
                    and isinstance(status.value, int)
                    and 500 <= status.value < 600
                    and isinstance(code, ast.Constant)
                    and isinstance(code.value, str)
                ):
                    answered.add(code.value)
    expr = alerts()["HooklineReceiverRefusing"]["expr"]
    [matcher] = [m for m in select(expr).metrics["hookline_ingest_errors_total"] if m.op == "=~"]
    assert set(matcher.value.split("|")) == answered
    assert answered == {"registry_unavailable", "store_unavailable", "too_many_connections"}


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_expression_reads_only_hookline_series(name: str) -> None:
    assert all(m.startswith("hookline_") for m in select(alerts()[name]["expr"]).metrics), name
