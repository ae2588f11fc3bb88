"""Adapters the API refuses, against fake engines: each broken adapter, hostile archive, oversized
upload or engine refusal is a 422 with its code and leaves nothing behind (no registry row, no
file, nothing loaded); bad form fields are a 400."""

from __future__ import annotations

import json

import pytest

from tests.helpers import adapter_files as f
from tests.helpers.adapter_service import archive, make_client, register, stored_files
from tests.helpers.app import assert_error, new_tenant

MAX_BYTES = 16 << 20  # the server's cap in the bad-adapter table (a rank-8 adapter is ~10 MB)


BAD_ARCHIVES = {
    "symlink in archive": (lambda d, t: f.tar_symlink(d), "link_in_archive"),
    ".. path": (lambda d, t: f.tar_dotdot(d), "path_escape"),
    "zip bomb": (lambda d, t: f.zip_bomb(d, 2 * MAX_BYTES), "archive_too_large"),
    "not an archive": (lambda d, t: f.not_an_archive(d), "invalid_archive"),
}


@pytest.mark.parametrize(
    "label",
    [*f.BAD_ADAPTERS, *BAD_ARCHIVES, "oversized upload", "engine refuses", "has no effect"],
)
def test_bad_adapters_are_refused_and_leave_nothing(tmp_path, engines, label):
    with make_client(tmp_path / "srv", engines, max_archive_bytes=MAX_BYTES) as client:
        _, headers = new_tenant(client)
        if label in f.BAD_ADAPTERS:
            mutate, code = f.BAD_ADAPTERS[label]
            data = archive(tmp_path, mutate=mutate)
        elif label in BAD_ARCHIVES:
            build, code = BAD_ARCHIVES[label]
            data = build(tmp_path / "bad.tar.gz", tmp_path).read_bytes()
        elif label == "oversized upload":
            # past the cap, inside the request body limit: refused while being stored
            data, code = b"\x1f\x8b" + b"\0" * (MAX_BYTES + (256 << 10)), "archive_too_large"
        elif label == "has no effect":  # the engine answers with it exactly as without it
            data, code = archive(tmp_path), "adapter_has_no_effect"
            for e in engines:
                e.inert_adapters = True
        else:
            data, code = archive(tmp_path), "engine_rejected_adapter"
            for e in engines:
                e.refuse_loads = True
        try:
            r = register(client, headers, data)
        finally:
            for e in engines:
                e.refuse_loads = e.inert_adapters = False
        assert_error(r, 422, code)
        assert client.get("/v1/adapters", headers=headers).json()["data"] == []
        assert stored_files(client) == []
        assert all(not e.loras for e in engines), "nothing left loaded"
        root = client.app.state.ragtune.settings.resolved_adapters_root
        assert not any(p.is_dir() and p.name != ".incoming" for p in root.iterdir())
        assert list((root / ".incoming").iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"name": ""}, "missing_name"),
        ({"name": "has space"}, "invalid_adapter_name"),
        ({"name": "a--b"}, "invalid_adapter_name"),
        ({"name": "auto"}, "invalid_adapter_name"),
        ({"examples": "not json"}, "invalid_examples"),
        ({"examples": json.dumps([1, 2])}, "invalid_examples"),
        ({"examples": json.dumps({"a": 1})}, "invalid_examples"),
    ],
)
def test_bad_fields(client, tmp_path, fields, code):
    _, headers = new_tenant(client)
    assert_error(register(client, headers, archive(tmp_path), **fields), 400, code)
    assert stored_files(client) == []


def test_register_needs_a_file_or_json(client):
    _, headers = new_tenant(client)
    r = client.post("/v1/adapters", headers=headers, files={"x": ("a", b"1")},
                    data={"name": "n"})
    assert_error(r, 400, "missing_file")
    r = client.post("/v1/adapters", headers={**headers, "content-type": "text/plain"},
                    content=b"x")
    assert_error(r, 400, "invalid_content_type")
