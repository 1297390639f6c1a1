"""Sending a bad request to the gateway app and checking how it was answered."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.hardening.tally import TALLY

API = "/api/v1"
BOUNDARY = "hardening-boundary-7f3a"
# Statuses a bad request may get: refused with a reason, or answered (odd but valid input).
ANSWERED = {200, 304, 400, 401, 404, 405, 413, 415, 422}


def json_body(value: Any) -> bytes:
    """JSON as a lenient client writes it: NaN/Infinity literals and lone surrogates (as escapes) allowed."""
    return json.dumps(value, allow_nan=True).encode()


def multipart(fields: list[tuple[str, bytes, str | None, str | None]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body from raw (name, value, filename, content type) parts."""
    chunks = []
    for name, value, filename, content_type in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        chunks.append(head.encode() + b"\r\n" + value + b"\r\n")
    body = b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def send(
    client: TestClient,
    method: str,
    url: str,
    *,
    content: bytes = b"",
    headers: dict[str, str] | None = None,
    surface: str = "http",
) -> httpx.Response:
    """Send one request; fail on a 5xx or an unexplained refusal; tally it."""
    request = client.build_request(method, url, content=content or None, headers=headers)
    identity = b"\n".join(
        [
            method.encode(),
            str(request.url).encode(),
            request.headers.get("content-type", "").encode(),
            content,
        ]
    )
    reply = client.send(request)
    TALLY.record(surface, identity, str(reply.status_code))
    where = f"{method} {url[:120]} body[:200]={content[:200]!r}"
    assert reply.status_code < 500, f"{reply.status_code} {reply.text[:300]} for {where}"
    assert reply.status_code in ANSWERED, f"unexpected {reply.status_code} for {where}"
    if reply.status_code >= 400:
        detail = reply.json().get("detail")
        assert isinstance(detail, str), f"no readable detail: {reply.text[:300]} for {where}"
        assert detail.strip(), f"empty detail for {where}"
        assert "Traceback" not in detail
    if reply.status_code == 200 and "scores" in reply.text:  # classify: a real distribution
        probabilities = [score["probability"] for score in reply.json()["scores"]]
        assert all(isinstance(p, float) and math.isfinite(p) for p in probabilities), reply.text[:300]
    return reply


def post_json(client: TestClient, path: str, value: Any, surface: str = "http") -> int:
    headers = {"content-type": "application/json"}
    return send(
        client, "POST", API + path, content=json_body(value), headers=headers, surface=surface
    ).status_code


def post_form(
    client: TestClient,
    path: str,
    fields: list[tuple[str, bytes, str | None, str | None]],
    surface: str = "http",
) -> int:
    body, headers = multipart(fields)
    return send(client, "POST", API + path, content=body, headers=headers, surface=surface).status_code


def upload(data: bytes, content_type: str = "image/png") -> tuple[str, bytes, str | None, str | None]:
    return ("file", data, "upload.png", content_type)


def assert_still_serving(client: TestClient) -> None:
    """The next good request is answered."""
    reply = client.post(f"{API}/search/text", json={"query": "a handwritten seven", "k": 3})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["hits"]) == 3
