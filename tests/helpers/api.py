"""Calls of the HTTP API that many tests make: chat, upload, wait for a job or an evaluation.
`client` is any httpx client with the service as its base URL: the in-process TestClient, or
`httpx.Client(base_url=server.url)` for a live server."""

from __future__ import annotations

import time

CHAT = "/v1/chat/completions"


def chat(client, headers, content="hello", **extra):
    """The response to one user message."""
    body = {"messages": [{"role": "user", "content": content}], **extra}
    return client.post(CHAT, json=body, headers=headers)


def ask(client, headers, question, **extra) -> dict:
    """The answer's body, which must be a 200."""
    r = chat(client, headers, question, **extra)
    assert r.status_code == 200, r.text
    return r.json()


def upload(client, headers, name, content, **data):
    """The response to uploading one file; `data` are the form fields (document_id, metadata)."""
    return client.post("/v1/documents", headers=headers, files={"file": (name, content)}, data=data)


def wait_job(client, headers, job_id, timeout=60) -> dict:
    """The job once it succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if body["state"] in ("succeeded", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {body}")


def wait_evaluation(client, headers, evaluation_id, timeout=60) -> dict:
    """The evaluation once it succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/evaluations/{evaluation_id}", headers=headers).json()
        if body["state"] in ("succeeded", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"evaluation {evaluation_id} did not end: {body}")


def indexed(client, headers, name, content, **data) -> dict:
    """Upload one new document and wait until it is indexed; the succeeded job."""
    r = upload(client, headers, name, content, **data)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["documents"][0]["status"] == "queued"
    job = wait_job(client, headers, body["job_id"])
    assert job["state"] == "succeeded", job
    return job


def sdk(client, headers):
    """The official `openai` client, unchanged, over the in-process app (`client`: the
    TestClient, an httpx client)."""
    import openai

    key = headers["Authorization"].split()[1]
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client,
                         max_retries=0)


def polled(oc, vs_id: str, file_id: str, **attributes):
    """Attach a file to a vector store and wait until it is indexed (the SDK's own helper)."""
    return oc.vector_stores.files.create_and_poll(vector_store_id=vs_id, file_id=file_id,
                                                  poll_interval_ms=50, **attributes)
