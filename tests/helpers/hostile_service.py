"""The service the hostile-input tests attack (tests/security/test_hostile_input.py and
test_nul_bytes.py): two tenants, A owning the document 'secret'; the health check run after each
attack; multipart bodies written by hand, bytes no client sends."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import adapter_files as f
from tests.helpers.api import CHAT
from tests.helpers.app import make_settings
from tests.helpers.fake_engine import FakeEngine

OK = {"messages": [{"role": "user", "content": "hi"}]}
MAX_FILE = 64 << 10  # the server under test takes files up to 64 KB
SECRET = b"The vault of Zephyr Outdoor Gear opens with the phrase copper heron 5512."


@dataclass
class Svc:
    client: TestClient
    a: dict[str, str]  # tenant A's auth header (owns the document 'secret')
    b: dict[str, str]
    a_id: str
    b_id: str


def start(tmp_path, engine: FakeEngine, **settings) -> TestClient:
    app = create_app(make_settings(tmp_path, [engine.url], model_dir=f.base_model_dir(),
                                   documents={"max_file_bytes": MAX_FILE}, **settings))
    return TestClient(app, raise_server_exceptions=False)


def healthy(client: TestClient, headers: dict[str, str], document_id: str | None = None) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200, client.get("/readyz").text
    r = client.post(CHAT, json=OK, headers=headers)
    assert r.status_code == 200, r.text
    if document_id is not None:
        r = client.get(f"/v1/documents/{document_id}", headers=headers)
        assert r.status_code == 200, r.text


def multipart(parts: list[tuple[str, bytes | None, bytes]], boundary: str = "B") -> dict:
    """A multipart body written by hand (name, filename or None, data): bytes no client sends."""
    body = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"'.encode()
        if filename is not None:
            disp += b'; filename="' + filename + b'"'
        body += b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disp
        body += b"\r\n\r\n" + data + b"\r\n"
    body += b"--" + boundary.encode() + b"--\r\n"
    return {"content": body,
            "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}
