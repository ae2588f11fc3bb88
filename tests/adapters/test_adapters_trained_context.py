"""An adapter is served the way it was trained, against fake engines: its training record
(`ragtune_training.json`) is packed, checked at registration (a bad one is a 422
`invalid_training_record` leaving nothing behind) and shown per version; adapter_rag gives an
adapter the top_k, floor and budget it was trained with, none at all when it was trained without
context, the policy's when it has no record or the policy says `adapter_context: "policy"`."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.pack import pack_adapter
from adapters.peft_files import TRAINING_NAME
from adapters.training_record import read_training_record
from core.errors import APIError
from tests.helpers import adapter_files as f
from tests.helpers.adapter_service import archive, register, stored_files
from tests.helpers.api import ask, upload, wait_job
from tests.helpers.app import ADMIN, assert_error, new_tenant

RECORD = {
    "format": 1,
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "context": {"top_k": 3, "min_score": -1.0, "context_max_tokens": 2000, "share": 0.5,
                "oracle_free_share": 0.2, "retrieval": "dense"},
    "steps": 150,
    "seconds": 812.5,
    "samples": 400,
    "loss": {"before": 2.31, "after": 0.42, "held_out_no_context": 0.61,
             "held_out_with_context": 0.48},
}
NO_CONTEXT = {**RECORD, "context": None}

QUESTION = "How many days do I have to return an item to Zephyr Outdoor Gear?"
DOCS = {  # one chunk each, all about returns: every one scores well above -1
    "returns": "Zephyr Outdoor Gear accepts returns of unused items within 45 days of delivery. "
               "Items must be in their original packaging, with tags.",
    "exchanges": "Zephyr Outdoor Gear exchanges clearance items for another size or colour "
                 "within 30 days; clearance items are never refunded.",
    "shipping": "Zephyr Outdoor Gear emails a prepaid return label within two days of a "
                "return request; returns from abroad pay their own postage.",
    "warranty": "Zephyr Outdoor Gear repairs tents and jackets under warranty for two years; "
                "a return for repair needs the receipt.",
}


def with_record(record) -> Callable[[Path], None]:
    """A mutation writing `record` (a dict, or raw text) as the folder's training record."""
    text = record if isinstance(record, str) else json.dumps(record)
    return lambda folder: (folder / TRAINING_NAME).write_text(text)


def tenant_with_documents(client, policy: dict) -> tuple[str, dict]:
    tid, headers = new_tenant(client, policy)
    for name, text in DOCS.items():
        r = upload(client, headers, f"{name}.txt", text, document_id=name)
        assert wait_job(client, headers, r.json()["job_id"])["state"] == "succeeded"
    return tid, headers


def set_policy(client, tid, **policy) -> None:
    r = client.patch(f"/v1/tenants/{tid}", headers=ADMIN, json={"policy": policy})
    assert r.status_code == 200, r.text


# ---- registration ---------------------------------------------------------------------------


def test_a_record_is_kept_per_version_and_shown(client, tmp_path):
    tenant, headers = new_tenant(client)
    r = register(client, headers, archive(tmp_path, mutate=with_record(RECORD)))
    assert r.status_code == 201, r.text
    assert r.json()["training"] == RECORD
    root = client.app.state.ragtune.settings.resolved_adapters_root
    assert (root / tenant / "warelang" / "v1" / TRAINING_NAME).is_file()

    # v2 trained elsewhere: no record; v1's stays with v1
    r = register(client, headers, archive(tmp_path, name="v2.tgz"))
    assert r.status_code == 201, r.text
    listed = client.get("/v1/adapters", headers=headers).json()["data"]
    assert [(a["version"], a["training"]) for a in listed] == [(2, None)]
    one = client.get("/v1/adapters/warelang", headers=headers).json()
    assert one["training"] is None
    assert [(v["version"], v["training"]) for v in one["versions"]] == [(2, None), (1, RECORD)]

    # a rollback serves v1 again, record and all
    r = client.post("/v1/adapters/warelang/rollback", headers=headers)
    assert r.status_code == 200 and r.json()["training"] == RECORD


def test_a_record_registered_by_uri(client, tmp_path):
    tenant, headers = new_tenant(client)
    root = client.app.state.ragtune.settings.resolved_adapters_root
    src = f.valid_adapter(root / "drop" / "trained")
    with_record(NO_CONTEXT)(src)
    r = client.post("/v1/adapters", headers=headers, json={"name": "fromdisk", "uri": str(src)})
    assert r.status_code == 201, r.text
    assert r.json()["training"] == NO_CONTEXT
    assert (root / tenant / "fromdisk" / "v1" / TRAINING_NAME).is_file()


def _broken(path: list, value) -> dict:
    record = copy.deepcopy(RECORD)
    at = record
    for key in path[:-1]:
        at = at[key]
    if value is _DROP:
        del at[path[-1]]
    else:
        at[path[-1]] = value
    return record


_DROP = object()
BAD_RECORDS = {
    "not JSON": "{'format': 1,",
    "not an object": json.dumps([RECORD]),
    "unknown format": _broken(["format"], 2),
    "context missing": _broken(["context"], _DROP),
    "top_k a string": _broken(["context", "top_k"], "3"),
    "top_k a bool": _broken(["context", "top_k"], True),
    "top_k zero": _broken(["context", "top_k"], 0),
    "min_score out of range": _broken(["context", "min_score"], 3.5),
    "budget a float": _broken(["context", "context_max_tokens"], 600.5),
    "unknown retrieval": _broken(["context", "retrieval"], "sparse"),
    "loss not an object": _broken(["loss"], 0.4),
    "steps negative": _broken(["steps"], -1),
    "base_model missing": _broken(["base_model"], _DROP),
}


@pytest.mark.parametrize("label", BAD_RECORDS)
def test_a_bad_record_is_refused_and_leaves_nothing(client, engines, tmp_path, label):
    _, headers = new_tenant(client)
    r = register(client, headers, archive(tmp_path, mutate=with_record(BAD_RECORDS[label])))
    err = assert_error(r, 422, "invalid_training_record")
    assert TRAINING_NAME in err["message"] and err["param"] == "file"
    assert client.get("/v1/adapters", headers=headers).json()["data"] == []
    assert stored_files(client) == []
    assert all(not e.loras for e in engines), "nothing loaded"
    root = client.app.state.ragtune.settings.resolved_adapters_root
    assert list((root / ".incoming").iterdir()) == []


def test_a_bad_record_by_uri_is_refused_and_leaves_nothing(client, engines, tmp_path):
    tenant, headers = new_tenant(client)
    root = client.app.state.ragtune.settings.resolved_adapters_root
    src = f.valid_adapter(root / "drop" / "broken")
    with_record(BAD_RECORDS["top_k a string"])(src)
    r = client.post("/v1/adapters", headers=headers, json={"name": "broken", "uri": str(src)})
    err = assert_error(r, 422, "invalid_training_record")
    assert err["param"] == "uri" and "top_k" in err["message"]
    assert client.get("/v1/adapters", headers=headers).json()["data"] == []
    assert not (root / tenant).exists()
    assert all(not e.loras for e in engines)


def test_record_checks_without_the_api(tmp_path):
    assert read_training_record(tmp_path) is None  # none: trained elsewhere
    (tmp_path / TRAINING_NAME).write_text(json.dumps({**RECORD, "lora": {"r": 16}}))
    assert read_training_record(tmp_path) == RECORD  # unknown keys are dropped, not refused
    ints = _broken(["seconds"], 812)  # an integer where a float belongs is a number all the same
    (tmp_path / TRAINING_NAME).write_text(json.dumps(ints))
    assert read_training_record(tmp_path)["seconds"] == 812
    (tmp_path / TRAINING_NAME).write_text(" " * (70 << 10))
    with pytest.raises(APIError) as exc:
        read_training_record(tmp_path)
    assert (exc.value.status, exc.value.code) == (422, "invalid_training_record")


def test_pack_adapter_packs_the_record(tmp_path):
    src = f.valid_adapter(tmp_path / "src")
    with_record(RECORD)(src)
    with tarfile.open(fileobj=io.BytesIO(pack_adapter(src)), mode="r:gz") as tf:
        names = tf.getnames()
        assert json.loads(tf.extractfile(TRAINING_NAME).read()) == RECORD
    assert {"adapter_config.json", "adapter_model.safetensors", TRAINING_NAME} <= set(names)


# ---- serving --------------------------------------------------------------------------------


def test_adapter_rag_uses_the_trained_top_k_floor_and_budget(client, tmp_path):
    # The policy alone would give one chunk at most, above a floor nothing clears.
    tid, headers = tenant_with_documents(client, {"top_k": 1, "min_score": 0.99})
    assert register(client, headers, archive(tmp_path, mutate=with_record(RECORD))).status_code \
        == 201
    embedder = client.app.state.ragtune.chat.router.retriever.embedder
    embedded, real = [], embedder.query
    embedder.query = lambda text: embedded.append(text) or real(text)
    out = ask(client, headers, QUESTION, model="warelang")
    assert embedded == [QUESTION]  # the wider search reuses the signals' query vector
    route = out["route"]
    assert route["path"] == "adapter_rag" and route["adapter"] == "warelang@1"
    s = route["signals"]
    assert (s["context_from"], s["top_k"], s["min_score"], s["context_max_tokens"]) == (
        "adapter", 3, -1.0, 2000)
    assert s["chunks"] == 3 == len(out["citations"]), route  # retrieved again, wider
    assert "top_score" in s and "trained with" in route["reason"]
    assert "Context passages" in out["choices"][0]["message"]["content"]

    # the rag path keeps exactly the policy's retrieval
    rag = ask(client, headers, QUESTION, route="rag")
    s = rag["route"]["signals"]
    assert (s["context_from"], s["top_k"], s["min_score"]) == ("policy", 1, 0.99)
    assert s["chunks"] == 0 and rag["citations"] == []

    # trained with fewer chunks than the policy retrieves: cut to the trained top_k
    set_policy(client, tid, top_k=4, min_score=-1)
    fewer = {**RECORD, "context": {**RECORD["context"], "top_k": 1}}
    assert register(client, headers, archive(tmp_path, name="v2.tgz",
                                             mutate=with_record(fewer))).status_code == 201
    out = ask(client, headers, QUESTION, model="warelang")
    assert out["route"]["adapter"] == "warelang@2"
    assert out["route"]["signals"]["top_k"] == 1 and len(out["citations"]) == 1
    assert len(ask(client, headers, QUESTION, route="rag")["citations"]) == 4


def test_the_trained_budget_bounds_the_context(client, tmp_path):
    _, headers = tenant_with_documents(client, {"top_k": 4, "min_score": -1,
                                                "context_max_tokens": 4000})
    tight = {**RECORD, "context": {**RECORD["context"], "top_k": 4, "context_max_tokens": 40}}
    assert register(client, headers, archive(tmp_path, mutate=with_record(tight))).status_code \
        == 201
    out = ask(client, headers, QUESTION, model="warelang")
    assert out["route"]["signals"]["context_max_tokens"] == 40
    assert len(out["citations"]) == 1  # 40 tokens hold one of these chunks, not two
    assert len(ask(client, headers, QUESTION, route="rag")["citations"]) == 4


def test_the_policy_may_override_the_trained_context(client, tmp_path):
    tid, headers = tenant_with_documents(client, {"top_k": 2, "min_score": -1,
                                                  "adapter_context": "policy"})
    assert register(client, headers, archive(tmp_path, mutate=with_record(RECORD))).status_code \
        == 201
    out = ask(client, headers, QUESTION, model="warelang")
    s = out["route"]["signals"]
    assert (s["context_from"], s["top_k"], s["min_score"], s["context_max_tokens"]) == (
        "policy", 2, -1.0, 600)
    assert len(out["citations"]) == 2
    set_policy(client, tid, adapter_context="trained")
    assert len(ask(client, headers, QUESTION, model="warelang")["citations"]) == 3


def test_an_adapter_trained_without_context_gets_no_passages(client, tmp_path):
    tid, headers = tenant_with_documents(client, {"mode": "adapter_rag", "min_score": -1})
    assert register(client, headers, archive(tmp_path, mutate=with_record(NO_CONTEXT))) \
        .status_code == 201
    for body in (ask(client, headers, QUESTION),  # the policy's mode
                 ask(client, headers, QUESTION, model="warelang")):  # named
        route = body["route"]
        assert route["path"] == "adapter_rag" and route["adapter"] == "warelang@1"
        assert body["citations"] == [] and route["signals"]["chunks"] == 0
        assert route["signals"]["context_from"] == "none"
        assert "trained without retrieved context" in route["reason"]
        assert "Context passages" not in body["choices"][0]["message"]["content"]
    # an evaluation showed passages help: the policy gives them
    set_policy(client, tid, adapter_context="policy")
    body = ask(client, headers, QUESTION, model="warelang")
    assert body["route"]["signals"]["context_from"] == "policy"
    assert len(body["citations"]) == 3


def test_an_adapter_without_a_record_gets_the_policys_context(client, tmp_path):
    _, headers = tenant_with_documents(client, {"top_k": 2, "min_score": -1})
    assert register(client, headers, archive(tmp_path)).status_code == 201
    out = ask(client, headers, QUESTION, model="warelang")
    s = out["route"]["signals"]
    assert (s["context_from"], s["top_k"], s["min_score"]) == ("policy", 2, -1.0)
    assert len(out["citations"]) == 2 and "trained with" not in out["route"]["reason"]


def test_auto_serves_the_matching_adapter_its_trained_context(client, tmp_path):
    _, headers = tenant_with_documents(client, {"top_k": 1, "min_score": -1,
                                                "adapter_match_min": 0.5})
    r = register(client, headers, archive(tmp_path, mutate=with_record(RECORD)),
                 examples=json.dumps([QUESTION]))
    assert r.status_code == 201, r.text
    out = ask(client, headers, QUESTION)
    assert out["route"]["path"] == "adapter_rag" and out["route"]["reason_kind"] == "auto_adapter"
    assert out["route"]["signals"]["context_from"] == "adapter"
    assert len(out["citations"]) == 3


# ---- a hot swap between prepare and the engine ------------------------------------------------


def test_a_retry_after_a_hot_swap_gives_the_new_version_its_own_context(tmp_path, engines):
    """A request prepared for v1 (trained with context) meets a replica that no longer holds v1,
    because v2 (trained without context) replaced it meanwhile: the retry goes to v2 with v2's
    context (none), not with the passages gathered for v1."""
    from ingest.context import CONTEXT_HEADER
    from service.protocol import ChatRequest
    from tests.helpers.adapter_service import make_client

    # v1 stays resident in ragtune's view for the whole test (no retire meanwhile)
    with make_client(tmp_path, engines, retire_grace_s=60) as client:
        tid, headers = tenant_with_documents(client, {})
        r = register(client, headers, archive(tmp_path, mutate=with_record(RECORD)))
        assert r.status_code == 201, r.text
        state = client.app.state.ragtune
        req = ChatRequest.model_validate(
            {"model": "warelang", "messages": [{"role": "user", "content": QUESTION}]}
        )
        p = client.portal.call(state.chat.prepare, state.tenants.get(tid), req)
        assert p.adapter.label == "warelang@1" and p.routed.cited  # v1: with passages

        r = register(
            client, headers, archive(tmp_path, mutate=with_record(NO_CONTEXT), name="b.tar.gz")
        )
        assert r.status_code == 201 and r.json()["version"] == 2, r.text
        for engine in engines:  # v1 left the replicas behind ragtune's back
            engine.loras.pop(f"{tid}--warelang--v1", None)
        out = client.portal.call(state.chat.complete, p)

        assert out["route"]["adapter"] == "warelang@2"
        assert out["route"]["signals"]["context_from"] == "none"
        assert out["citations"] == []
        sent = [rq for e in engines for rq in e.requests if rq["model"].endswith("--v2")]
        assert sent, "the retry did not reach v2"
        assert not any(
            CONTEXT_HEADER in str(m.get("content")) for m in sent[-1]["messages"]
        ), sent[-1]["messages"]
