"""Logging set up once (clipsearch.logs): text or JSON lines, with the request id on every record."""

from __future__ import annotations

import json
import logging

import pytest

from clipsearch.logs import (
    REQUEST_ID,
    configure_logging,
    joined_request_ids,
    new_request_id,
    valid_request_id,
)


def test_json_format_writes_one_object_per_line_with_the_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("clipsearch.test")
    log.info("outside any request")
    token = REQUEST_ID.set("req-1234")
    try:
        log.warning("inside %s", "a request")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    finally:
        REQUEST_ID.reset(token)
    log.debug("below the level")
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["message"] for r in records] == ["outside any request", "inside a request", "it failed"]
    assert [r.get("request_id") for r in records] == [None, "req-1234", "req-1234"]
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    assert {r["logger"] for r in records} == {"clipsearch.test"}
    assert records[0]["time"].endswith("Z")
    assert "ValueError: boom" in records[2]["exception"]


def test_text_format_names_the_request_and_a_second_call_replaces_the_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    configure_logging("DEBUG", "text")
    log = logging.getLogger("clipsearch.test")
    token = REQUEST_ID.set("abc")
    try:
        log.debug("one line")
    finally:
        REQUEST_ID.reset(token)
    log.debug("no request")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines  # one handler: each record once
    assert lines[0].endswith("DEBUG clipsearch.test [abc]: one line")
    assert lines[1].endswith("DEBUG clipsearch.test: no request")


def test_libraries_that_log_every_http_call_are_quiet_above_debug() -> None:
    configure_logging("INFO")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    configure_logging("DEBUG")
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("grpc._cython.cygrpc").isEnabledFor(logging.DEBUG)  # a line per call


def test_an_unknown_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="debug, info, warning, error, critical"):
        configure_logging("loud")


@pytest.mark.parametrize(
    ("value", "several", "valid"),
    [
        ("3f2a9c", False, True),
        ("client-id_1.2:3/4+5=", False, True),
        ("a" * 128, False, True),
        ("a" * 129, False, False),
        ("", False, False),
        ("-leading-dash", False, False),
        ("has space", False, False),
        ("new\nline", False, False),
        ('quote"', False, False),
        ("é", False, False),
        ("a,b", False, False),
        ("a,b,c", True, True),
        ("a,,b", True, False),
    ],
)
def test_request_ids_from_clients_are_checked(value: str, several: bool, valid: bool) -> None:
    assert (valid_request_id(value, several=several) == value) is valid


def test_new_ids_are_valid_and_distinct() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(valid_request_id(value) for value in ids)


def test_a_shared_call_carries_each_request_id_once() -> None:
    assert joined_request_ids(["a", None, "b", "a"]) == "a,b"
    assert joined_request_ids([None, None]) is None
