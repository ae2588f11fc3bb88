"""`ragtune ingest`'s job wait against a server that misbehaves (the happy path runs against the
real server in tests/integration/test_rag_e2e.py)."""

from __future__ import annotations

import httpx

from ingest.cli import _message, _wait


def test_wait_rides_out_5xx_and_counts_unknown_or_stuck_jobs_as_failed():
    polls = {"ok": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        job = request.url.path.rsplit("/", 1)[1]
        if job == "gone":
            return httpx.Response(404, json={"error": {"message": "job 'gone' not found",
                                                      "type": "x", "param": None, "code": "y"}})
        polls["ok"] += 1
        if polls["ok"] == 1:  # a proxy's page while the server restarts
            return httpx.Response(502, text="<html>bad gateway</html>")
        return httpx.Response(200, json={"state": "succeeded"})

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://x") as client:
        assert _wait(client, ["ok", "gone"]) == 1
    assert polls["ok"] == 2

    stuck = httpx.MockTransport(lambda r: httpx.Response(200, json={"state": "running"}))
    with httpx.Client(transport=stuck, base_url="http://x") as client:
        assert _wait(client, ["a", "b"], timeout_s=0.2) == 2


def test_wait_rides_out_a_server_that_is_not_there_for_a_while():
    """The server restarts: the connection is refused, or cut mid-answer; the wait asks again."""
    polls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        polls["n"] += 1
        if polls["n"] == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if polls["n"] == 2:
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        if polls["n"] == 3:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json={"state": "succeeded"})

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://x") as client:
        assert _wait(client, ["a"]) == 0
    assert polls["n"] == 4


def test_message_reads_the_error_shape_or_falls_back_to_text():
    shaped = httpx.Response(400, json={"error": {"message": "bad file"}})
    assert _message(shaped) == "bad file"
    assert _message(httpx.Response(502, text="<html>x</html>")) == "<html>x</html>"
