"""Hostile input, table-driven: each row is refused with its 4xx status and `code` in the one error
shape, and after each row the service is healthy (/healthz, /readyz, a normal chat) and the
tenant's document is still there.

Rows: malformed and oversized JSON (deep nesting, NaN, lone surrogates, invalid UTF-8, numbers no
double holds), huge `messages` lists, prompt-sized headers, multipart bombs (thousands of parts
or fields, a huge field, a huge file, broken boundaries), path tricks in document, job, adapter
and tenant ids (`..`, `%2e%2e`, encoded slashes, NUL, absolute paths) and in upload
`document_id` and adapter names, SQL-ish and filter-injection strings in ids; then the tests
after the table: upload metadata trying to override the tenant filter (checked with a second
tenant), filter injection in list queries and integers beyond 64 bits. Text PostgreSQL refuses
(NUL), on SQLite and on PostgreSQL where one answers, is tests/security/test_nul_bytes.py.

Archive bombs and tricks for adapters (zip/tar bombs, PAX header bombs, lying sizes, links,
`..` members, too many members) are in tests/adapters/test_archive.py and
tests/adapters/test_adapters_refused.py::test_bad_adapters_are_refused_and_leave_nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.api import CHAT, indexed
from tests.helpers.app import ADMIN, assert_error, new_tenant
from tests.helpers.fake_engine import FakeEngine
from tests.helpers.hostile_service import (
    MAX_FILE,
    OK,
    SECRET,
    Svc,
    healthy,
    multipart,
    start,
)


@pytest.fixture(scope="module")
def svc(tmp_path_factory) -> Iterator[Svc]:
    engine = FakeEngine().start()
    try:
        with start(tmp_path_factory.mktemp("hostile"), engine) as client:
            a_id, a = new_tenant(client)
            b_id, b = new_tenant(client)
            indexed(client, a, "secret.txt", SECRET)
            indexed(client, b, "notes.txt", b"Our office plants are watered on Mondays.")
            yield Svc(client, a, b, a_id, b_id)
    finally:
        engine.stop()


def raw_json(body: bytes) -> dict:
    return {"content": body, "headers": {"content-type": "application/json"}}


def upload(document_id: str | None = None, metadata: str | None = None,
           name: str = "a.txt", data: bytes = b"hello") -> dict:
    fields = {k: v for k, v in (("document_id", document_id), ("metadata", metadata))
              if v is not None}
    return {"files": {"file": (name, data)}, "data": fields}


def adapter_form(name: str, **fields) -> dict:
    # The archive is junk: each row is refused on its fields, before the archive is read.
    return {"files": {"file": ("a.tar.gz", b"\x1f\x8bjunk")}, "data": {"name": name, **fields}}


DEEP = b"[" * 5000 + b"]" * 5000

# (name, method, path, auth, kwargs builder, status, code); auth "a" = tenant A, "admin", None
Row = tuple[str, str, str, str | None, Callable[[], dict], int, str]
ROWS: list[Row] = [
    # ---- JSON -------------------------------------------------------------------------------
    ("truncated json", "POST", CHAT, "a", lambda: raw_json(b'{"messages": [{"role": '), 400,
     "invalid_json"),
    ("json is an array", "POST", CHAT, "a", lambda: raw_json(b"[1, 2, 3]"), 400, "invalid_value"),
    ("json is a string", "POST", CHAT, "a", lambda: raw_json(b'"messages"'), 400, "invalid_value"),
    ("deeply nested json", "POST", CHAT, "a",
     lambda: raw_json(b'{"messages": [{"role": "user", "content": "x", "z": ' + DEEP + b"}]}"),
     400, "invalid_json"),
    ("deeply nested tenant policy", "POST", "/v1/tenants", "admin",
     lambda: raw_json(b'{"id": "deep", "policy": ' + DEEP + b"}"), 400, "invalid_json"),
    ("deeply nested adapter json", "POST", "/v1/adapters", "a",
     lambda: raw_json(b'{"name": "x", "uri": "y", "examples": ' + DEEP + b"}"), 400,
     "invalid_body"),
    ("NaN", "POST", CHAT, "a",
     lambda: raw_json(b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
     400, "invalid_json"),
    ("number beyond a double", "POST", CHAT, "a",
     lambda: raw_json(b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1'
                      + b"0" * 5000 + b"}"), 400, "invalid_json"),
    ("lone surrogate", "POST", CHAT, "a",
     lambda: raw_json(b'{"messages": [{"role": "user", "content": "\\ud800"}]}'), 400,
     "invalid_json"),
    ("lone surrogate in explain", "POST", "/v1/policy/explain", "a",
     lambda: raw_json(b'{"queries": ["\\udfff"]}'), 400, "invalid_json"),
    ("lone surrogate in advisor samples", "POST", "/v1/advisor", "a",
     lambda: raw_json(b'{"sample_texts": ["hello \\ud800 world"]}'), 400, "invalid_json"),
    ("lone surrogate in a policy", "PATCH", "/v1/tenants/{a}", "admin",
     lambda: raw_json(b'{"policy": {"system_prompt": "\\ud800"}}'), 400, "invalid_json"),
    ("invalid utf-8", "POST", CHAT, "a",
     lambda: raw_json(b'{"messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}'), 400,
     "invalid_json"),
    ("invalid utf-8 tenant", "POST", "/v1/tenants", "admin", lambda: raw_json(b'{"id": "\xc3"}'),
     400, "invalid_json"),
    ("oversized json", "POST", CHAT, "a",
     lambda: {"json": {"messages": [{"role": "user", "content": "a" * (2 << 20)}]}}, 413,
     "request_too_large"),
    ("content-length beyond the limit", "POST", CHAT, "a",
     lambda: {"content": b"{}", "headers": {"content-type": "application/json",
                                             "content-length": str(10**12)}}, 413,
     "request_too_large"),
    ("huge messages list", "POST", CHAT, "a",
     lambda: {"json": {"messages": [{"role": "user", "content": "a"}] * 20_000}}, 400,
     "too_many_messages"),
    ("huge messages list past the body limit", "POST", CHAT, "a",
     lambda: {"json": {"messages": [{"role": "user", "content": "a"}] * 60_000}}, 413,
     "request_too_large"),
    ("thousands of explain queries", "POST", "/v1/policy/explain", "a",
     lambda: {"json": {"queries": ["q"] * 5000}}, 400, "invalid_value"),
    # ---- headers ----------------------------------------------------------------------------
    ("64 KB header", "POST", CHAT, "a",
     lambda: {"json": OK, "headers": {"x-prompt": "a" * (64 << 10)}}, 431, "headers_too_large"),
    ("64 KB bearer token", "POST", CHAT, None,
     lambda: {"json": OK, "headers": {"authorization": "Bearer " + "a" * (64 << 10)}}, 431,
     "headers_too_large"),
    ("thousands of headers", "GET", "/v1/documents", "a",
     lambda: {"headers": [(f"x-h{i}", "v" * 16) for i in range(2000)]}, 431,
     "headers_too_large"),
    ("a bearer token the length of a prompt", "POST", CHAT, None,
     lambda: {"json": OK, "headers": {"authorization": "Bearer " + "rt-" + "a" * 16_000}}, 401,
     "invalid_api_key"),
    # ---- multipart --------------------------------------------------------------------------
    ("thousands of file parts", "POST", "/v1/documents", "a",
     lambda: {"files": [("file", (f"f{i}.txt", b"x")) for i in range(3000)]}, 400,
     "invalid_multipart"),
    ("thousands of fields", "POST", "/v1/documents", "a",
     lambda: {"files": {"file": ("a.txt", b"x")}, "data": {f"k{i}": "v" for i in range(3000)}},
     400, "invalid_multipart"),
    ("a huge field", "POST", "/v1/documents", "a",
     lambda: upload(metadata="{" + " " * 500_000 + "}"), 400, "invalid_multipart"),
    ("a file past the file limit", "POST", "/v1/documents", "a",
     lambda: upload(data=b"a" * (MAX_FILE + 1)), 413, "file_too_large"),
    ("an upload past the request limit", "POST", "/v1/documents", "a",
     lambda: upload(data=b"a" * (4 << 20)), 413, "request_too_large"),
    ("multipart without a boundary", "POST", "/v1/documents", "a",
     lambda: {"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400,
     "invalid_multipart"),
    ("multipart with a wrong boundary", "POST", "/v1/documents", "a",
     lambda: {"content": b"--other\r\n\r\nx", "headers": {
         "content-type": "multipart/form-data; boundary=B"}}, 400, "invalid_multipart"),
    ("a part without its end", "POST", "/v1/documents", "a",
     lambda: {"content": b'--B\r\nContent-Disposition: form-data; name="file"; '
                         b'filename="a.txt"\r\n\r\nhello',
              "headers": {"content-type": "multipart/form-data; boundary=B"}}, 400,
     "missing_file"),
    ("metadata nested past the limit", "POST", "/v1/documents", "a",
     lambda: upload(metadata="[" * 3000 + "]" * 3000), 400, "invalid_metadata"),
    ("metadata with a lone surrogate", "POST", "/v1/documents", "a",
     lambda: upload(metadata='{"a": "\\ud800"}'), 400, "invalid_metadata"),
    ("metadata as a file part", "POST", "/v1/documents", "a",
     lambda: {"files": [("file", ("a.txt", b"x")), ("metadata", ("m.json", b"{}"))]}, 400,
     "invalid_metadata"),
    ("document_id as a file part", "POST", "/v1/documents", "a",
     lambda: {"files": [("file", ("a.txt", b"x")), ("document_id", ("d", b"x"))]}, 400,
     "invalid_document_id"),
    ("NUL in a file name", "POST", "/v1/documents", "a",
     lambda: multipart([("file", b"a\x00.txt", b"hi"), ("document_id", None, b"fine")]), 400,
     "invalid_filename"),
    ("control character in a file name", "POST", "/v1/documents", "a",
     lambda: multipart([("file", b"a\x1b[31m.txt", b"hi")]), 400, "invalid_filename"),
    ("thousands of adapter parts", "POST", "/v1/adapters", "a",
     lambda: {"files": [("file", (f"f{i}", b"x")) for i in range(3000)]}, 400,
     "invalid_multipart"),
    ("a huge adapter field", "POST", "/v1/adapters", "a",
     lambda: adapter_form("n", description="d" * (600 << 10)), 400, "invalid_multipart"),
    ("adapter examples nested past the limit", "POST", "/v1/adapters", "a",
     lambda: adapter_form("n", examples="[" * 3000 + "]" * 3000), 400, "invalid_examples"),
    # ---- path tricks and injection in ids ---------------------------------------------------
    *[
        (f"{method} document id {label}", method, f"/v1/documents/{raw}", "a", dict, 404, code)
        for method in ("GET", "DELETE")
        for label, raw, code in [
            ("%2e%2e", "%2e%2e", "document_not_found"),
            ("..%2fsecret", "..%2fsecret", "not_found"),  # decoded, the path has one more part
            ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "not_found"),
            ("..%5csecret", "..%5csecret", "document_not_found"),
            ("absolute path", "%2fetc%2fpasswd", "not_found"),
            ("secret/..", "secret%2f..", "not_found"),
            ("./secret", ".%2fsecret", "not_found"),
            ("' OR 1=1 --", "'%20OR%201=1%20--", "document_not_found"),
            ("'; DROP TABLE documents; --", "';%20DROP%20TABLE%20documents;%20--",
             "document_not_found"),
            ('{"$ne": null}', "%7B%22%24ne%22%3A%20null%7D", "document_not_found"),
            ("*", "*", "document_not_found"),
            ("%", "%25", "document_not_found"),
            ("10 000 characters", "a" * 10_000, "document_not_found"),
        ]
    ],
    *[
        (f"upload document_id {label}", "POST", "/v1/documents", "a",
         (lambda value=value: upload(document_id=value)), 400, "invalid_document_id")
        for label, value in [
            ("../x", "../x"), ("..", ".."), ("a/b", "a/b"), ("absolute", "/etc/passwd"),
            ("backslash", "..\\x"), ("%2e%2e", "%2e%2e"), ("NUL", "a\x00b"), ("empty", ""),
            ("dot", "."), ("starts with a dot", ".hidden"), ("too long", "a" * 129),
            ("' OR 1=1 --", "' OR 1=1 --"), ('{"$ne": null}', '{"$ne": null}'),
            ("tenant path", "../../t-other/secret"), ("trailing newline", "x\n"),
        ]
    ],
    *[
        (f"job id {label}", "GET", f"/v1/jobs/{raw}", "a", dict, 404, code)
        for label, raw, code in [
            ("%2e%2e", "%2e%2e", "job_not_found"),
            ("..%2f..%2fetc%2fpasswd", "..%2f..%2fetc%2fpasswd", "not_found"),
            ("' OR '1'='1", "'%20OR%20'1'='1", "job_not_found"),
            ("%", "%25", "job_not_found"),
        ]
    ],
    *[
        (f"adapter name {label}", "POST", "/v1/adapters", "a",
         (lambda value=value: adapter_form(value)), 400, "invalid_adapter_name")
        for label, value in [
            ("../x", "../x"), ("..", ".."), ("a/b", "a/b"), ("absolute", "/etc/passwd"),
            ("backslash", "..\\x"), ("NUL", "a\x00"), ("t--name--v1", "t--name--v1"),
            ("' OR 1=1 --", "' OR 1=1 --"), ("too long", "a" * 65),
        ]
    ],
    ("adapter name ../x as JSON", "POST", "/v1/adapters", "a",
     lambda: {"json": {"name": "../x", "uri": "anything"}}, 400, "invalid_adapter_name"),
    ("adapter uri outside the root", "POST", "/v1/adapters", "a",
     lambda: {"json": {"name": "ok", "uri": "/etc"}}, 422, "path_escape"),
    ("adapter uri climbing out", "POST", "/v1/adapters", "a",
     lambda: {"json": {"name": "ok", "uri": "../../../../etc"}}, 422, "path_escape"),
    ("adapter uri with NUL", "POST", "/v1/adapters", "a",
     lambda: {"json": {"name": "ok", "uri": "drop\u0000/x"}}, 422, "unsupported_uri"),
    *[
        (f"{method} adapter {label}", method, path, "a", dict, 404, code)
        for method, path, label, code in [
            ("GET", "/v1/adapters/%2e%2e", "%2e%2e", "adapter_not_found"),
            ("DELETE", "/v1/adapters/%2e%2e", "%2e%2e", "adapter_not_found"),
            ("POST", "/v1/adapters/%2e%2e/rollback", "%2e%2e", "adapter_not_found"),
            ("GET", "/v1/adapters/..%2f..%2fetc", "..%2f..%2fetc", "not_found"),
            ("DELETE", "/v1/adapters/'%20OR%201=1%20--", "' OR 1=1 --", "adapter_not_found"),
        ]
    ],
    ("rollback to a version beyond 64 bits", "POST", "/v1/adapters/x/rollback", "a",
     lambda: {"json": {"version": 2**70}}, 400, "invalid_value"),
    ("rollback to version 0", "POST", "/v1/adapters/x/rollback", "a",
     lambda: {"json": {"version": 0}}, 400, "invalid_value"),
    ("tenant id ../x", "POST", "/v1/tenants", "admin", lambda: {"json": {"id": "../x"}}, 400,
     "invalid_tenant_id"),
    ("tenant id with NUL", "POST", "/v1/tenants", "admin", lambda: {"json": {"id": "a\u0000"}},
     400, "invalid_tenant_id"),
    ("tenant id ' OR 1=1 --", "GET", "/v1/tenants/'%20OR%201=1%20--", "admin", dict, 404,
     "tenant_not_found"),
    ("tenant id %2e%2e", "DELETE", "/v1/tenants/%2e%2e", "admin", dict, 404, "tenant_not_found"),
    ("tenant id with a trailing newline", "POST", "/v1/tenants", "admin",
     lambda: {"json": {"id": "nl\n"}}, 400, "invalid_tenant_id"),
    ("adapter name with a trailing newline", "POST", "/v1/adapters", "a",
     lambda: adapter_form("nl\n"), 400, "invalid_adapter_name"),
]
PARAMS = [r if isinstance(r, type(pytest.param())) else pytest.param(*r, id=r[0]) for r in ROWS]


@pytest.mark.parametrize("name,method,path,auth,build,status,code", PARAMS)
def test_hostile(svc: Svc, name, method, path, auth, build, status, code):
    kwargs = build()
    extra = kwargs.pop("headers", {})
    headers = list(extra) if isinstance(extra, list) else list(extra.items())
    if auth == "a":
        headers += list(svc.a.items())
    elif auth == "admin":
        headers += list(ADMIN.items())
    resp = svc.client.request(method, path.format(a=svc.a_id), headers=headers, **kwargs)
    assert_error(resp, status, code)
    healthy(svc.client, svc.a, "secret")


def test_metadata_cannot_override_the_tenant_filter(svc: Svc):
    """Upload metadata naming another tenant, or filter operators, stays the document's metadata:
    the chunks are the uploader's, and the other tenant sees nothing."""
    tricks = {"tenant_id": svc.b_id, "document_id": "notes", "version": 99,
              "$or": [{"tenant_id": {"$ne": None}}], "must": [{"key": "tenant_id"}],
              "' OR 1=1 --": "'; DROP TABLE documents; --"}
    text = b"The spare key of the Zephyr boathouse hangs behind the red lantern."
    indexed(svc.client, svc.a, "boathouse.txt", text, metadata=json.dumps(tricks))
    doc = svc.client.get("/v1/documents/boathouse", headers=svc.a).json()
    assert doc["metadata"] == tricks
    question = "Where does the spare key of the Zephyr boathouse hang?"
    for route in ("rag", None):
        body = {"messages": [{"role": "user", "content": question}],
                **({"route": route} if route else {})}
        got_b = svc.client.post(CHAT, headers=svc.b, json=body).json()
        assert all(c["document_id"] != "boathouse" for c in got_b["citations"]), got_b
        assert "lantern" not in json.dumps(got_b)
    assert "boathouse" not in [d["document_id"] for d in
                               svc.client.get("/v1/documents", headers=svc.b).json()["data"]]
    got_a = svc.client.post(CHAT, headers=svc.a, json={
        "messages": [{"role": "user", "content": question}], "route": "rag"}).json()
    assert got_a["citations"][0]["document_id"] == "boathouse"
    # B's own upload with an operator where the tenant goes changes nothing for A's documents
    indexed(svc.client, svc.b, "mine.txt", b"B's memo about the boathouse paint colour.",
            metadata=json.dumps({"tenant_id": {"$ne": None}}))
    got_b = svc.client.post(CHAT, headers=svc.b, json={
        "messages": [{"role": "user", "content": question}], "route": "rag"}).json()
    assert {c["document_id"] for c in got_b["citations"]} <= {"mine", "notes"}
    healthy(svc.client, svc.a, "secret")


@pytest.mark.parametrize("after", ["' OR 1=1 --", '{"$ne": null}', "", "%", "\\", "*", "a" * 5000])
def test_filter_injection_in_list_queries(svc: Svc, after):
    r = svc.client.get("/v1/documents", headers=svc.b, params={"after": after, "limit": 1000})
    assert r.status_code == 200, r.text
    assert {d["document_id"] for d in r.json()["data"]} <= {"notes", "mine"}


@pytest.mark.parametrize("limit", ["-1", "0", "99999999999999999999999", "1e3", "abc"])
def test_odd_list_limits(svc: Svc, limit):
    r = svc.client.get("/v1/documents", headers=svc.b, params={"limit": limit})
    if r.status_code == 200:
        assert {d["document_id"] for d in r.json()["data"]} <= {"notes", "mine"}
    else:
        assert_error(r, 400, "invalid_value")


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "x"}], "seed": 2**64},
    {"messages": [{"role": "user", "content": "x", "name": "n", "extra": -(2**63) - 1}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "n": 10**30}]}]},
    {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2**70}},
], ids=["seed", "message field", "content part", "logit_bias"])
def test_integers_beyond_64_bits_are_not_a_500(svc: Svc, body):
    """They were (orjson cannot write them to the engine); JSON bodies are now read with orjson,
    which reads them as doubles, so they reach the engine as numbers it can judge."""
    r = svc.client.post(CHAT, headers=svc.a, json=body)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}
    healthy(svc.client, svc.a, "secret")
