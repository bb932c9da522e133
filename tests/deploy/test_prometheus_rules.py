"""deploy/prometheus: the rules pass promtool's checks and unit tests, every alert says
what to do, and the unit tests cover each alert firing and not firing."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY

RULES = DEPLOY / "prometheus" / "vmatlas-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "vmatlas-rules.test.yml"


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_says_what_it_is_and_what_to_run() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)) >= 7
    for rule in alerts():
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert (
            "`vmatlas diff" in annotations["runbook"] or "`vmatlas audit" in annotations["runbook"]
        ), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]


def test_unit_tests_cover_each_alert_firing_and_not() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                # The rendered annotations are part of what is tested.
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}
    names = {rule["alert"] for rule in alerts()}
    assert firing == names
    assert quiet == names
