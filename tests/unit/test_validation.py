from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from scheduler.domain.errors import FieldViolation
from scheduler.domain.validation import (
    DagNodeSpec,
    check_config,
    check_cpu,
    check_dag,
    check_dns_label,
    check_image_reference,
    check_json_schema,
    check_memory,
    check_text,
    merge_config,
    parse_quantity,
)

SHA = "a" * 64


def only(violations: list[FieldViolation]) -> FieldViolation:
    assert len(violations) == 1, violations
    return violations[0]


# --- quantities ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("500m", Decimal("0.5"), id="milli"),
        pytest.param("1", Decimal(1), id="integer"),
        pytest.param("2.5", Decimal("2.5"), id="decimal-point"),
        pytest.param(".5", Decimal("0.5"), id="leading-point"),
        pytest.param("5.", Decimal(5), id="trailing-point"),
        pytest.param("+3", Decimal(3), id="plus-sign"),
        pytest.param("-1", Decimal(-1), id="minus-sign"),
        pytest.param("1Ki", Decimal(1024), id="Ki"),
        pytest.param("512Mi", Decimal(512 * 2**20), id="Mi"),
        pytest.param("1Gi", Decimal(2**30), id="Gi"),
        pytest.param("1.5Ei", Decimal(3 * 2**59), id="fractional-Ei-exact"),
        pytest.param("100M", Decimal(10**8), id="M"),
        pytest.param("1E", Decimal(10**18), id="E-is-exa"),
        pytest.param("7n", Decimal("7e-9"), id="nano"),
        pytest.param("1e3", Decimal(1000), id="exponent"),
        pytest.param("1E6", Decimal(10**6), id="capital-exponent"),
        pytest.param("25e-1", Decimal("2.5"), id="negative-exponent"),
    ],
)
def test_parse_quantity(text: str, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "1GB", "abc", "1 Gi", "Gi", "1.2.3", "1gi", "1e", "٣", "1e1001", "1Gi\n"],
    ids=[
        "empty",
        "GB",
        "letters",
        "space",
        "suffix-only",
        "two-points",
        "lowercase-gi",
        "bare-e",
        "non-ascii-digit",
        "huge-exponent",
        "trailing-newline",
    ],
)
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"quantity|exponent"):
        parse_quantity(text)


@pytest.mark.parametrize(
    "value",
    ["500m", "1", "2.5", "0.5", "1Gi", "512Mi", "1e3", "100M", "1m", "2Ki"],
    ids=["500m", "1", "2.5", "0.5", "1Gi", "512Mi", "1e3", "100M", "1m", "binary-suffix"],
)
def test_check_cpu_accepts(value: str) -> None:
    assert check_cpu(value, "runner.cpu_limit") == []


@pytest.mark.parametrize(
    ("value", "wrong", "accepted"),
    [
        pytest.param("1GB", "'1GB' is not a Kubernetes quantity", "such as 500m", id="GB"),
        pytest.param("-1", "'-1' is not positive", "above zero", id="negative"),
        pytest.param("0", "'0' is not positive", "above zero", id="zero"),
        pytest.param("", "is required", "Kubernetes quantity such as", id="empty"),
        pytest.param("abc", "not a Kubernetes quantity", "optional suffix", id="letters"),
        pytest.param("1 Gi", "not a Kubernetes quantity", "optional suffix", id="space"),
        pytest.param("Gi", "not a Kubernetes quantity", "optional suffix", id="suffix-only"),
        pytest.param("1.2.3", "not a Kubernetes quantity", "optional suffix", id="two-points"),
        pytest.param("1gi", "not a Kubernetes quantity", "optional suffix", id="lowercase-gi"),
        pytest.param("0.0001", "less than one millicore", "at least 1m", id="below-1m"),
        pytest.param("1" * 65, "65 characters long", "500m", id="too-long"),
        pytest.param("9223372036854775808", "exceeds", "smaller", id="above-2^63-1"),
    ],
)
def test_check_cpu_rejects(value: str, wrong: str, accepted: str) -> None:
    violation = only(check_cpu(value, "runner.cpu_limit"))
    assert violation.field == "runner.cpu_limit"
    assert wrong in violation.description
    assert accepted in violation.description


@pytest.mark.parametrize(
    "value",
    ["1", "1Gi", "512Mi", "1e3", "100M", "1.5Ki", "1k", "8E"],
    ids=["one-byte", "1Gi", "512Mi", "1e3", "100M", "fractional-Ki", "1k", "8E"],
)
def test_check_memory_accepts(value: str) -> None:
    assert check_memory(value, "runner.memory_limit") == []


@pytest.mark.parametrize(
    ("value", "wrong", "accepted"),
    [
        pytest.param(
            "1GB",
            "'1GB' is not a Kubernetes quantity",
            "use a number with an optional suffix such as 512Mi, 1Gi",
            id="GB",
        ),
        pytest.param("-1", "not positive", "512Mi", id="negative"),
        pytest.param("0", "not positive", "512Mi", id="zero"),
        pytest.param("", "is required", "512Mi", id="empty"),
        pytest.param("abc", "not a Kubernetes quantity", "512Mi", id="letters"),
        pytest.param("1 Gi", "not a Kubernetes quantity", "512Mi", id="space"),
        pytest.param("Gi", "not a Kubernetes quantity", "512Mi", id="suffix-only"),
        pytest.param("1.2.3", "not a Kubernetes quantity", "512Mi", id="two-points"),
        pytest.param("1gi", "not a Kubernetes quantity", "512Mi", id="lowercase-gi"),
        pytest.param("0.5", "not a whole number of bytes", "512Mi", id="half-byte"),
        pytest.param("500m", "not a whole number of bytes", "512Mi", id="milli-bytes"),
        pytest.param("9Ei", "exceeds", "smaller", id="above-2^63-1"),
    ],
)
def test_check_memory_rejects(value: str, wrong: str, accepted: str) -> None:
    violation = only(check_memory(value, "runner.memory_limit"))
    assert violation.field == "runner.memory_limit"
    assert wrong in violation.description
    assert accepted in violation.description


# --- names and text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "csv-parser", "a1", "0", "x" * 63, "a--b"],
    ids=["one-letter", "dashed", "letter-digit", "digit", "63-chars", "double-dash"],
)
def test_check_dns_label_accepts(value: str) -> None:
    assert check_dns_label(value, "runner.name") == []


@pytest.mark.parametrize(
    ("value", "wrong"),
    [
        pytest.param("", "runner name is required", id="empty"),
        pytest.param("x" * 64, "64 characters long", id="64-chars"),
        pytest.param("Csv", "'Csv' is not a DNS-1123 label", id="uppercase"),
        pytest.param("-a", "'-a' is not", id="leading-dash"),
        pytest.param("a-", "'a-' is not", id="trailing-dash"),
        pytest.param("a_b", "'a_b' is not", id="underscore"),
        pytest.param("a.b", "'a.b' is not", id="dot"),
        pytest.param("a\n", "is not", id="trailing-newline"),
    ],
)
def test_check_dns_label_rejects(value: str, wrong: str) -> None:
    violation = only(check_dns_label(value, "runner.name", what="runner name"))
    assert violation.field == "runner.name"
    assert wrong in violation.description
    assert "lowercase letters, digits and '-'" in violation.description


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", [], id="empty-ok"),
        pytest.param("x" * 10, [], id="at-limit"),
        pytest.param("Legacy runner.\nUse with care.", [], id="multi-line"),
    ],
)
def test_check_text_accepts(value: str, expected: list[FieldViolation]) -> None:
    assert check_text(value, "runner.description", max_len=30) == expected


@pytest.mark.parametrize(
    ("value", "wrong"),
    [
        pytest.param("x" * 11, "11 characters long, more than the 10 accepted", id="too-long"),
        pytest.param("a\x00b", "NUL character", id="nul"),
    ],
)
def test_check_text_rejects(value: str, wrong: str) -> None:
    violation = only(check_text(value, "runner.description", max_len=10))
    assert violation.field == "runner.description"
    assert wrong in violation.description


# --- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "heatglobal.azurecr.io/heat-runner-legacy:latest",
        "python:3.11-slim",
        f"localhost:5000/a/b@sha256:{SHA}",
        "busybox",
        f"busybox:1.36@sha256:{SHA}",
        "team/app",
        "team/a__b.c_d---e",
        "[::1]:5000/x:y",
        "Registry.Example.com/app",
        f"app@sha512:{'0' * 128}",
        f"app@multihash+base58:{'f' * 32}",
    ],
    ids=[
        "registry-and-tag",
        "hub-with-tag",
        "registry-port-digest",
        "bare-name",
        "tag-and-digest",
        "hub-namespace",
        "all-separators",
        "ipv6-registry",
        "uppercase-registry",
        "sha512",
        "other-algorithm",
    ],
)
def test_check_image_reference_accepts(value: str) -> None:
    assert check_image_reference(value, "runner.container_image") == []


@pytest.mark.parametrize(
    ("value", "wrong"),
    [
        pytest.param("", "is required", id="empty"),
        pytest.param("UPPER/case", "must be lowercase", id="uppercase-path"),
        pytest.param("a b", "'a b' is not a container image reference", id="space"),
        pytest.param("image:", "tag after ':' is empty", id="empty-tag"),
        pytest.param("http://x/y", "'http:' is not a registry host", id="url"),
        pytest.param(":tag", "repository name is missing", id="tag-only"),
        pytest.param("app:.x", "the tag '.x'", id="tag-leading-dot"),
        pytest.param(f"app:{'t' * 129}", "the tag", id="tag-too-long"),
        pytest.param("app@sha256:abc", "at least 32 hex digits", id="short-digest"),
        pytest.param(f"app@sha256:{'a' * 63}", "exactly 64 hex digits", id="sha256-length"),
        pytest.param("a/" * 128 + "a", "257 characters long", id="name-too-long"),
        pytest.param("a" * 1025, "1025 characters long", id="reference-too-long"),
        pytest.param("a" * 250 + "-", "'/'-separated components", id="no-backtracking-blowup"),
        pytest.param("a//b", "'/'-separated components", id="empty-component"),
        pytest.param("app-", "'/'-separated components", id="trailing-separator"),
    ],
)
def test_check_image_reference_rejects(value: str, wrong: str) -> None:
    violation = only(check_image_reference(value, "runner.container_image"))
    assert violation.field == "runner.container_image"
    assert wrong in violation.description
    assert "[registry[:port]/]repository[:tag][@digest]" in violation.description


# --- JSON Schema and configurations ----------------------------------------------------------

THRESHOLD_SCHEMA = {
    "type": "object",
    "properties": {
        "threshold": {"type": "number", "minimum": 0},
        "columns": {"type": "array", "items": {"type": "string"}},
        "output": {
            "type": "object",
            "properties": {"format": {"enum": ["csv", "parquet"]}},
            "required": ["format"],
        },
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "schema",
    [
        None,
        {},
        THRESHOLD_SCHEMA,
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"},
        {"$defs": {"n": {"type": "number"}}, "properties": {"a": {"$ref": "#/$defs/n"}}},
    ],
    ids=["none", "empty", "typical", "draft-07", "explicit-2020-12", "local-ref"],
)
def test_check_json_schema_accepts(schema: dict[str, object] | None) -> None:
    assert check_json_schema(schema, "node_template.config_schema") == []


@pytest.mark.parametrize(
    ("schema", "wrong"),
    [
        pytest.param({"type": 5}, "(at $.type)", id="bad-type"),
        pytest.param(
            {"properties": {"a": {"minimum": "x"}}},
            "'x' is not of type 'number' (at $.properties.a.minimum)",
            id="nested-path",
        ),
        pytest.param({"pattern": "("}, "is not a 'regex'", id="bad-regex"),
        pytest.param({"$schema": 5}, "$schema 5 is not a dialect", id="non-string-dialect"),
        pytest.param(
            {"$schema": "https://example.com/mine"}, "is not a dialect", id="unknown-dialect"
        ),
    ],
)
def test_check_json_schema_rejects(schema: dict[str, object], wrong: str) -> None:
    violation = only(check_json_schema(schema, "node_template.config_schema"))
    assert violation.field == "node_template.config_schema"
    assert wrong in violation.description
    assert "Draft 2020-12" in violation.description


@pytest.mark.parametrize(
    ("config", "schema"),
    [
        pytest.param({"threshold": 1.5}, THRESHOLD_SCHEMA, id="valid"),
        pytest.param({}, THRESHOLD_SCHEMA, id="nothing-required"),
        pytest.param({"anything": [1, 2]}, None, id="no-schema"),
        pytest.param({"anything": [1, 2]}, {}, id="empty-schema"),
    ],
)
def test_check_config_accepts(config: dict[str, object], schema: dict[str, object] | None) -> None:
    assert check_config(config, schema, "node_template.default_config") == []


def test_check_config_reports_one_violation_per_bad_field_sorted_by_path() -> None:
    config = {
        "threshold": -1,
        "columns": ["a", 2, "c", 4],
        "output": {"format": "xml"},
        "extra": True,
    }
    violations = check_config(config, THRESHOLD_SCHEMA, "node_template.default_config")
    assert [(v.field, v.description) for v in violations] == [
        (
            "node_template.default_config",
            "Additional properties are not allowed ('extra' was unexpected)",
        ),
        ("node_template.default_config.columns[1]", "2 is not of type 'string'"),
        ("node_template.default_config.columns[3]", "4 is not of type 'string'"),
        ("node_template.default_config.output.format", "'xml' is not one of ['csv', 'parquet']"),
        ("node_template.default_config.threshold", "-1 is less than the minimum of 0"),
    ]


def test_check_config_names_a_missing_required_property() -> None:
    violation = only(check_config({"output": {}}, THRESHOLD_SCHEMA, "session.nodes[0].config"))
    assert violation == FieldViolation(
        "session.nodes[0].config.output", "'format' is a required property"
    )


def test_check_config_never_fetches_a_remote_reference() -> None:
    schema = {"properties": {"a": {"$ref": "https://example.com/schema.json"}}}
    violation = only(check_config({"a": 1}, schema, "cfg"))
    assert violation.field == "cfg"
    assert "'https://example.com/schema.json' does not resolve" in violation.description


@pytest.mark.parametrize(
    ("defaults", "overrides", "expected"),
    [
        pytest.param({"a": 1}, {}, {"a": 1}, id="no-overrides"),
        pytest.param({}, {"a": 1}, {"a": 1}, id="no-defaults"),
        pytest.param({"a": 1, "b": 2}, {"b": 3}, {"a": 1, "b": 3}, id="scalar-replaced"),
        pytest.param(
            {"o": {"x": 1, "y": 2}},
            {"o": {"y": 3, "z": 4}},
            {"o": {"x": 1, "y": 3, "z": 4}},
            id="objects-merged",
        ),
        pytest.param(
            {"o": {"p": {"x": 1, "y": 2}}},
            {"o": {"p": {"y": 9}}},
            {"o": {"p": {"x": 1, "y": 9}}},
            id="merged-recursively",
        ),
        pytest.param({"l": [1, 2, 3]}, {"l": [4]}, {"l": [4]}, id="list-replaced"),
        pytest.param({"o": {"x": 1}}, {"o": 5}, {"o": 5}, id="object-replaced-by-scalar"),
        pytest.param({"o": 5}, {"o": {"x": 1}}, {"o": {"x": 1}}, id="scalar-replaced-by-object"),
        pytest.param({"a": 1}, {"a": None}, {"a": None}, id="null-replaces"),
    ],
)
def test_merge_config(
    defaults: dict[str, object], overrides: dict[str, object], expected: dict[str, object]
) -> None:
    assert merge_config(defaults, overrides) == expected


def test_merge_config_mutates_and_shares_nothing() -> None:
    defaults = {"o": {"x": [1]}, "keep": {"k": [1]}}
    overrides = {"o": {"y": [2]}, "new": {"n": [3]}}
    before = (copy.deepcopy(defaults), copy.deepcopy(overrides))
    merged = merge_config(defaults, overrides)
    merged["o"]["x"].append(9)
    merged["o"]["y"].append(9)
    merged["keep"]["k"].append(9)
    merged["new"]["n"].append(9)
    assert (defaults, overrides) == before


# --- DAGs ------------------------------------------------------------------------------------

TEMPLATES = {"join": True, "parse": False, "source": True}
FIELD = "session_template.nodes"


def dag(*nodes: tuple[str, str, tuple[str, ...]]) -> list[DagNodeSpec]:
    return [DagNodeSpec(key, template, deps) for key, template, deps in nodes]


def run_check_dag(nodes: list[DagNodeSpec], *, max_nodes: int = 100) -> list[FieldViolation]:
    return check_dag(nodes, FIELD, multiple_inputs=TEMPLATES.get, max_nodes=max_nodes)


@pytest.mark.parametrize(
    "nodes",
    [
        pytest.param(dag(("a", "source", ())), id="single-node"),
        pytest.param(
            dag(
                ("a", "source", ()),
                ("b", "parse", ("a",)),
                ("c", "parse", ("a",)),
                ("d", "join", ("b", "c")),
            ),
            id="diamond",
        ),
        pytest.param(
            dag(
                ("d", "join", ("b", "c")),
                ("c", "parse", ("a",)),
                ("b", "parse", ("a",)),
                ("a", "source", ()),
            ),
            id="diamond-listed-downstream-first",
        ),
        pytest.param(dag(("a", "source", ()), ("b", "source", ())), id="disconnected"),
    ],
)
def test_check_dag_accepts(nodes: list[DagNodeSpec]) -> None:
    assert run_check_dag(nodes) == []


@pytest.mark.parametrize(
    ("nodes", "field", "description"),
    [
        pytest.param([], FIELD, "a DAG needs at least one node", id="no-nodes"),
        pytest.param(
            dag(("Bad_Key", "source", ())),
            f"{FIELD}[0].key",
            "node key 'Bad_Key' is not a DNS-1123 label",
            id="bad-key",
        ),
        pytest.param(
            dag(("", "source", ())), f"{FIELD}[0].key", "node key is required", id="empty-key"
        ),
        pytest.param(
            dag(("a", "source", ()), ("b", "source", ()), ("a", "source", ())),
            f"{FIELD}[2].key",
            f"node key 'a' is already used by {FIELD}[0]",
            id="duplicate-key",
        ),
        pytest.param(
            dag(("a", "", ())),
            f"{FIELD}[0].node_template",
            "node template is required",
            id="empty-template",
        ),
        pytest.param(
            dag(("a", "x", ())),
            f"{FIELD}[0].node_template",
            "node template 'x' does not exist",
            id="unknown-template",
        ),
        pytest.param(
            dag(("a", "source", ()), ("b", "join", ("a", "zz"))),
            f"{FIELD}[1].depends_on[1]",
            "no node has the key 'zz'",
            id="unknown-upstream",
        ),
        pytest.param(
            dag(("a", "source", ("a",))),
            f"{FIELD}[0].depends_on[0]",
            "node 'a' depends on itself",
            id="self-dependency",
        ),
        pytest.param(
            dag(("a", "source", ()), ("b", "join", ("a", "a"))),
            f"{FIELD}[1].depends_on[1]",
            "'a' is already listed at depends_on[0]",
            id="duplicate-upstream",
        ),
        pytest.param(
            dag(("a", "source", ()), ("b", "join", ("",))),
            f"{FIELD}[1].depends_on[0]",
            "is empty",
            id="empty-upstream",
        ),
        pytest.param(
            dag(("a", "source", ()), ("b", "source", ()), ("k", "parse", ("a", "b"))),
            f"{FIELD}[2].depends_on",
            "node template 'parse' accepts a single upstream input; 'k' has 2: a, b",
            id="second-upstream-for-single-input",
        ),
        pytest.param(
            dag(("a", "join", ("c",)), ("b", "join", ("a",)), ("c", "join", ("b",))),
            FIELD,
            "the dependencies form a cycle: a -> c -> b -> a",
            id="cycle",
        ),
        pytest.param(
            dag(
                ("root", "source", ()),
                ("x", "join", ("root", "z")),
                ("y", "join", ("x",)),
                ("z", "join", ("y",)),
                ("tail", "join", ("z",)),
            ),
            FIELD,
            "the dependencies form a cycle: x -> z -> y -> x",
            id="cycle-behind-a-root",
        ),
    ],
)
def test_check_dag_rejects(nodes: list[DagNodeSpec], field: str, description: str) -> None:
    violation = only(run_check_dag(nodes))
    assert violation.field == field
    assert description in violation.description


def test_check_dag_rejects_too_many_nodes_before_looking_at_them() -> None:
    nodes = dag(*((f"n{i}", "ghost", ("ghost",)) for i in range(4)))
    assert run_check_dag(nodes, max_nodes=3) == [
        FieldViolation(FIELD, "has 4 nodes; a DAG has at most 3")
    ]


def test_check_dag_reports_every_violation_and_still_finds_the_cycle() -> None:
    nodes = dag(("a", "nope", ("b", "b")), ("b", "join", ("a", "ghost")), ("b", "join", ()))
    assert [v.field for v in run_check_dag(nodes)] == [
        f"{FIELD}[0].node_template",
        f"{FIELD}[0].depends_on[1]",
        f"{FIELD}[1].depends_on[1]",
        f"{FIELD}[2].key",
        FIELD,
    ]


def test_check_dag_asks_once_per_template() -> None:
    asked: list[str] = []

    def multiple_inputs(name: str) -> bool | None:
        asked.append(name)
        return True

    nodes = dag(("a", "t", ()), ("b", "t", ("a",)), ("c", "u", ("b",)), ("d", "t", ("c",)))
    assert check_dag(nodes, FIELD, multiple_inputs=multiple_inputs, max_nodes=10) == []
    assert asked == ["t", "u"]


def test_check_dag_shortens_a_huge_cycle() -> None:
    size = 1000
    nodes = [DagNodeSpec(f"n{i}", "join", (f"n{(i + 1) % size}",)) for i in range(size)]
    description = only(run_check_dag(nodes, max_nodes=size)).description
    assert description.startswith("the dependencies form a cycle: n0 -> n1 -> ")
    assert "… 981 more -> n0;" in description
    assert len(description) < 400


def test_check_dag_validates_a_100000_node_layered_dag() -> None:
    width, size = 100, 100_000
    nodes = [
        DagNodeSpec(
            f"n{i}",
            "join",
            tuple(f"n{i - width + k}" for k in range(3) if i - width + k >= 0)
            if i >= width
            else (),
        )
        for i in range(size)
    ]
    assert run_check_dag(nodes, max_nodes=size) == []
