"""Text PostgreSQL refuses (NUL) in paths, file names, stored JSON and adapter descriptions: a
400 with its code where it is refused, kept where JSON stores it, and the service healthy after
each; on SQLite and on PostgreSQL where one answers (RAGTUNE_TEST_POSTGRES_URL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import adapter_files as f
from tests.helpers.api import indexed
from tests.helpers.app import ADMIN, assert_error, new_tenant
from tests.helpers.fake_engine import FakeEngine
from tests.helpers.hostile_service import SECRET, Svc, healthy, multipart, start


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_svc(request, tmp_path_factory) -> Iterator[Svc]:
    settings = {}
    cleanup = None
    if request.param == "postgres":
        from tests.helpers.postgres import TempPostgres, postgres_available

        if not postgres_available():
            pytest.skip("no PostgreSQL at RAGTUNE_TEST_POSTGRES_URL")
        pg = TempPostgres()
        settings, cleanup = {"database_url": pg.url}, pg.drop
    engine = FakeEngine().start()
    try:
        with start(tmp_path_factory.mktemp(f"db-{request.param}"), engine, **settings) as client:
            a_id, a = new_tenant(client)
            b_id, b = new_tenant(client)
            indexed(client, a, "secret.txt", SECRET)
            yield Svc(client, a, b, a_id, b_id)
    finally:
        engine.stop()
        if cleanup is not None:
            cleanup()


NUL_ROWS = [
    ("GET", "/v1/documents/a%00b", "a"), ("DELETE", "/v1/documents/a%00b", "a"),
    ("GET", "/v1/jobs/a%00b", "a"), ("GET", "/v1/adapters/a%00b", "a"),
    ("DELETE", "/v1/adapters/a%00b", "a"), ("POST", "/v1/adapters/a%00b/rollback", "a"),
    ("GET", "/v1/documents?after=a%00b", "a"), ("GET", "/v1/tenants/a%00b", "admin"),
    ("PATCH", "/v1/tenants/a%00b", "admin"), ("DELETE", "/v1/tenants/a%00b", "admin"),
    ("POST", "/v1/tenants/a%00b/keys", "admin"),
]


@pytest.mark.parametrize("method,path,auth", NUL_ROWS, ids=[f"{m} {p}" for m, p, _ in NUL_ROWS])
def test_nul_in_a_path_is_a_400_on_every_registry(db_svc: Svc, method, path, auth):
    headers = db_svc.a if auth == "a" else ADMIN
    kwargs = {"json": {"policy": {}}} if method == "PATCH" else {}
    resp = db_svc.client.request(method, path, headers=headers, **kwargs)
    assert_error(resp, 400, "invalid_characters")
    healthy(db_svc.client, db_svc.a, "secret")


def test_nul_in_a_file_name_is_a_400_on_every_registry(db_svc: Svc):
    body = multipart([("file", b"a\x00b.txt", b"hello"), ("document_id", None, b"named")])
    resp = db_svc.client.post("/v1/documents", content=body["content"],
                              headers={**db_svc.a, **body["headers"]})
    assert_error(resp, 400, "invalid_filename")
    healthy(db_svc.client, db_svc.a, "secret")


def test_nul_in_stored_json_round_trips(db_svc: Svc):
    """NUL inside JSON the registry stores (metadata, a policy) is kept and read back."""
    job = indexed(db_svc.client, db_svc.a, "nul.txt", b"plain text",
                  metadata='{"k\\u0000": "v\\u0000"}')
    assert job["state"] == "succeeded"
    doc = db_svc.client.get("/v1/documents/nul", headers=db_svc.a)
    assert doc.status_code == 200 and doc.json()["metadata"] == {"k\x00": "v\x00"}
    r = db_svc.client.patch(f"/v1/tenants/{db_svc.b_id}", headers=ADMIN,
                            json={"policy": {"system_prompt": "be\x00brief"}})
    assert r.status_code == 200, r.text
    healthy(db_svc.client, db_svc.b)
    healthy(db_svc.client, db_svc.a, "secret")


def test_nul_in_an_adapter_description_is_a_400(db_svc: Svc, tmp_path):
    archive = f.tar_gz_of(f.valid_adapter(tmp_path / "adapter"), tmp_path / "a.tar.gz")
    resp = db_svc.client.post("/v1/adapters", headers=db_svc.a,
                              files={"file": ("a.tar.gz", archive.read_bytes())},
                              data={"name": "nuldesc", "description": "rules\x00for WARELANG"})
    assert_error(resp, 400, "invalid_description")
    healthy(db_svc.client, db_svc.a, "secret")


def test_nul_in_eval_sets_is_refused_or_kept_as_json(db_svc: Svc):
    """An eval set's name, grammar and item ids are text columns: NUL is a 422 there; inside
    the items (a JSON column) it is kept, and the set still runs."""
    item = {"query": "q\x00", "checks": {"contains": ["\x00"]}}
    post = lambda body: db_svc.client.post("/v1/eval-sets", headers=db_svc.a, json=body)  # noqa: E731
    assert_error(post({"name": "a\x00b", "items": [item]}), 422, "invalid_eval_set")
    assert_error(post({"name": "g", "items": [item], "grammar": 'start: "a"\x00'}), 422,
                 "invalid_eval_set")
    assert_error(post({"name": "i", "items": [{**item, "id": "x\x00"}]}), 422,
                 "invalid_eval_set")
    made = post({"name": "kept", "items": [item]})
    assert made.status_code == 201, made.text
    healthy(db_svc.client, db_svc.a, "secret")
