"""The artefact rules, pure: references in JSON, file inputs against a DAG, the URIs an operator
allows, and content counted and hashed against what its sender announced."""

from __future__ import annotations

import hashlib

import pytest

from scheduler.domain.artifacts import (
    Content,
    FileInput,
    Upload,
    allowed,
    check_file_inputs,
    check_file_sources,
    file_problems,
    parse_allowed,
    parse_source,
    receivers,
    references_in,
    task_inputs,
)
from scheduler.domain.errors import InvalidArgument, ResourceExhausted

A = "a" * 32
B = "b" * 32


def test_references_are_found_anywhere_and_malformed_ones_named() -> None:
    outputs = {
        "file": {"$artifact": f"artifacts/{A}"},
        "parts": [{"$artifact": f"artifacts/{B}"}, {"n": 1}],
        "bad": {"$artifact": f"artifacts/{A}", "size": 3},
        "worse": [{"$artifact": 7}],
    }
    ids, problems = references_in(outputs)
    assert sorted(ids) == [A, B]
    assert len(problems) == 2
    assert any("outputs['bad']" in p for p in problems)
    assert any("outputs['worse'][0]" in p for p in problems)
    assert references_in({"$artifact": "sessions/x"})[1]


def test_file_problems_name_what_is_not_a_ready_file_of_the_session() -> None:
    outputs = [{"$artifact": f"artifacts/{A}"}, {"$artifact": f"artifacts/{B}"}]
    assert file_problems(outputs, {A: 1, B: 1}, 1) == ""
    assert "is not a file of this Session" in file_problems(outputs, {A: 1, B: 2}, 1)
    assert "is no stored artefact" in file_problems(outputs, {A: 1}, 1)
    assert "is not a file of this Session" in file_problems(outputs, {A: 1, B: None}, 1)


def test_task_inputs_add_the_nodes_files_as_references() -> None:
    assert task_inputs({"up": {"n": 1}}, {"file": f"artifacts/{A}"}) == {
        "up": {"n": 1},
        "file": {"$artifact": f"artifacts/{A}"},
    }
    assert task_inputs(None, None) == {}


KEYS = ["load", "clean", "sum"]
UPSTREAM = {"load": (), "clean": ("load",), "sum": ("clean",)}


def test_a_file_without_a_node_goes_to_every_node_without_upstream_nodes() -> None:
    assert receivers(FileInput("file"), KEYS, UPSTREAM) == ["load"]
    assert receivers(FileInput("file", node_key="sum"), KEYS, UPSTREAM) == ["sum"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([FileInput("file", artifact="x")], set()),
        ([FileInput("file", node_key="nope", artifact="x")], {"files[0].node_key"}),
        ([FileInput("clean", node_key="sum", artifact="x")], {"files[0].input"}),
        (
            [FileInput("f", artifact="x"), FileInput("f", node_key="load", artifact="y")],
            {"files[1].input"},
        ),
    ],
)
def test_file_inputs_are_checked_against_the_dag(
    files: list[FileInput], expected: set[str]
) -> None:
    assert {v.field for v in check_file_inputs(files, KEYS, UPSTREAM)} == expected


def test_file_inputs_have_a_name_and_one_source() -> None:
    found = check_file_sources(
        [FileInput("9", artifact="x"), FileInput("ok"), FileInput("f", uri="file:///" + "x" * 3000)]
    )
    assert {v.field for v in found} == {"files[0].input", "files[1].source", "files[2].uri"}
    assert check_file_sources([FileInput("f", artifact="x")] * 101)[0].field == "files"


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("file:///srv/in/a.csv", True),
        ("file://localhost/srv/in/sub/a.csv", True),
        ("file:///srv/in", True),
        ("file:///srv/input/a.csv", False),
        ("file:///srv/a.csv", False),
        ("s3://bucket/inputs/day/a.csv", True),
        ("s3://bucket/inputs-secret/a.csv", False),
        ("s3://other/inputs/a.csv", False),
    ],
)
def test_allowed_prefixes_are_folders(uri: str, ok: bool) -> None:
    prefixes = parse_allowed("file:///srv/in/, s3://bucket/inputs")
    assert allowed(parse_source(uri), prefixes) is ok


@pytest.mark.parametrize(
    "uri",
    [
        "file:///srv/in/../etc/passwd",
        "file://host/srv/in/a",
        "file:relative",
        "http://example.com/a",
        "file:///srv/in/a?x=1",
        "s3://bucket/../a",
        "s3:///key",
    ],
)
def test_uris_the_scheduler_does_not_read(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_source(uri)


def test_content_is_bounded_and_checked_against_what_was_announced() -> None:
    data = b"hello"
    content = Content(Upload(size_bytes=5, sha256=hashlib.sha256(data).hexdigest()), 10)
    content.add(data)
    assert content.finish() == hashlib.sha256(data).hexdigest()
    with pytest.raises(ResourceExhausted):
        Content(Upload(), 4).add(data)
    short = Content(Upload(size_bytes=6), 10)
    short.add(data)
    with pytest.raises(InvalidArgument):
        short.finish()
    wrong = Content(Upload(sha256="0" * 64), 10)
    wrong.add(data)
    with pytest.raises(InvalidArgument, match="changed on the way"):
        wrong.finish()
