"""The pure half of the Kubernetes backend: names, labels, pod templates, and what a pod's
status means."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from scheduler.domain.provisioning import Phase
from scheduler.provisioner._k8s_pods import generate_name
from scheduler.provisioner._k8s_template import (
    TemplateError,
    check_pod_template,
    load_pod_template,
    merge,
)
from scheduler.provisioner.kubernetes import dns_label, label_safe, observe_pod, secret_name

LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("csv-runner", True),
        ("Model_v2.1", True),
        ("", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("has space", False),
        ("-leading", False),
        ("trailing.", False),
        ("ümlaut", False),
        ("___", False),
        ("x/y:z", False),
    ],
)
def test_label_safe(value: str, kept: bool) -> None:
    safe = label_safe(value)
    assert len(safe) <= 63 and LABEL_VALUE.fullmatch(safe)
    assert (safe == value) is kept
    assert label_safe(value) == safe  # stable
    if not kept:
        assert re.search(r"[0-9a-f]{8}$", safe)  # says it was changed


def test_label_safe_keeps_distinct_values_distinct() -> None:
    a, b = "r" * 70 + "-one", "r" * 70 + "-two"
    assert label_safe(a) != label_safe(b)
    assert label_safe("a b") != label_safe("a-b") == "a-b"


@pytest.mark.parametrize(
    "value", ["csv-runner", "CSV_Runner", "x" * 80, "-a-", "a.b", "ünïcode", "9lives"]
)
def test_dns_names(value: str) -> None:
    for name in (dns_label(value), generate_name(value)[:-1], secret_name("sched", value)):
        assert DNS_LABEL.fullmatch(name), name
    assert len(generate_name(value)) <= 58 and generate_name(value).endswith("-")
    assert secret_name("sched", value).startswith("heat-runner-sched-")
    assert secret_name("a", value) != secret_name("b", value)
    if DNS_LABEL.fullmatch(value) and len(value) <= 57:
        assert generate_name(value) == value + "-"
        assert secret_name("sched", value) == "heat-runner-sched-" + value


def pod(status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "r-abcde",
            "uid": "u-1",
            "creationTimestamp": "2025-03-01T10:00:00Z",
            "annotations": {"heat.io/runner": "r"},
            **meta,
        },
        "status": status,
    }


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": message}}
    return {"name": "runner", "state": state}


def terminated(exit_code: int, reason: str = "") -> dict[str, Any]:
    return {"name": "runner", "state": {"terminated": {"exitCode": exit_code, "reason": reason}}}


READY = [{"type": "Ready", "status": "True"}]


@pytest.mark.parametrize(
    ("status", "phase", "ready", "reason"),
    [
        ({}, Phase.PENDING, False, ""),
        ({"phase": "Pending", "containerStatuses": [waiting("ContainerCreating")]},
         Phase.PENDING, False, ""),
        ({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes"}]},
         Phase.PENDING, False, "Unschedulable: 0/3 nodes"),
        ({"phase": "Pending", "containerStatuses": [waiting("ImagePullBackOff", "no such image")]},
         Phase.FAILED, False, "ImagePullBackOff: no such image"),
        ({"phase": "Pending", "initContainerStatuses": [waiting("ErrImagePull")]},
         Phase.FAILED, False, "ErrImagePull"),
        ({"phase": "Running", "containerStatuses": [waiting("CrashLoopBackOff")]},
         Phase.FAILED, False, "CrashLoopBackOff"),
        ({"phase": "Running"}, Phase.RUNNING, False, ""),
        ({"phase": "Running", "conditions": READY}, Phase.RUNNING, True, ""),
        ({"phase": "Succeeded", "containerStatuses": [terminated(0, "Completed")]},
         Phase.SUCCEEDED, False, ""),
        ({"phase": "Failed", "containerStatuses": [terminated(137, "OOMKilled")]},
         Phase.FAILED, False, "OOMKilled (exit code 137)"),
        ({"phase": "Failed", "containerStatuses": [terminated(0, "Completed"), terminated(2)]},
         Phase.FAILED, False, "Error (exit code 2)"),
        ({"phase": "Failed", "reason": "Evicted", "message": "low on memory"},
         Phase.FAILED, False, "Evicted: low on memory"),
        ({"phase": "Failed", "reason": "DeadlineExceeded"},
         Phase.FAILED, False, "DeadlineExceeded"),
        ({"phase": "Failed"}, Phase.FAILED, False, "Failed"),
        ({"phase": "Unknown"}, Phase.PENDING, False, ""),
    ],
)  # fmt: skip
def test_observe_pod(status: dict[str, Any], phase: Phase, ready: bool, reason: str) -> None:
    observed = observe_pod(pod(status))
    assert (observed.phase, observed.ready, observed.reason) == (phase, ready, reason)
    assert (observed.name, observed.uid, observed.runner) == ("r-abcde", "u-1", "r")
    assert observed.created is not None and observed.created.isoformat() == (
        "2025-03-01T10:00:00+00:00"
    )
    assert not observed.deleting


def test_observe_pod_deleting_and_runner_fallback() -> None:
    raw = pod({"phase": "Running"}, deletionTimestamp="2025-03-01T10:01:00Z", annotations={})
    raw["metadata"]["labels"] = {"heat.io/runner": "from-label"}
    observed = observe_pod(raw)
    assert observed.deleting and not observed.live
    assert observed.runner == "from-label"


# --- pod templates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "field", "words"),
    [
        ([], "", "an object with metadata and spec"),
        ({"spec": {"containers": [{"name": "runner", "imagePullPolcy": "Always"}]}},
         "spec.containers[0].imagePullPolcy", "did you mean imagePullPolicy?"),
        ({"spec": {"tolerations": {"key": "gpu"}}}, "spec.tolerations", "expected a list"),
        ({"spec": {"terminationGracePeriodSeconds": "60"}},
         "spec.terminationGracePeriodSeconds", "expected a whole number, got a string"),
        ({"metadata": {"labels": {"team": 3}}}, "metadata.labels[team]", "expected a string"),
        ({"spec": {"automountServiceAccountToken": "yes"}},
         "spec.automountServiceAccountToken", "expected true or false"),
        ({"sepc": {}}, "sepc", "did you mean spec?"),
    ],
)  # fmt: skip
def test_a_wrong_template_names_the_field(template: Any, field: str, words: str) -> None:
    with pytest.raises(TemplateError) as caught:
        check_pod_template(template)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_template_file_loads_from_yaml(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "metadata:\n  annotations: {a: b}\nspec:\n  nodeSelector: {pool: batch}\n"
        "  containers:\n  - name: runner\n    resources: {limits: {cpu: 2}}\n"
    )
    assert load_pod_template(good)["spec"]["nodeSelector"] == {"pool": "batch"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: {nodeSelectr: {}}")
    with pytest.raises(TemplateError, match=r"spec\.nodeSelectr: unknown field"):
        load_pod_template(bad)
    with pytest.raises(TemplateError, match="cannot read"):
        load_pod_template(tmp_path / "missing.yaml")


def test_merge_merges_named_lists_and_replaces_the_rest() -> None:
    base = {
        "spec": {
            "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}],
            "tolerations": [{"key": "t1"}],
        }
    }
    over = {
        "spec": {
            "containers": [
                {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                {"name": "sidecar"},
            ],
            "tolerations": [{"key": "t2"}],
        }
    }
    merged = merge(base, over)
    assert merged == {
        "spec": {
            "containers": [
                {"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                {"name": "sidecar"},
            ],
            "tolerations": [{"key": "t2"}],
        }
    }
    assert base["spec"]["tolerations"] == [{"key": "t1"}], "the inputs are left alone"
