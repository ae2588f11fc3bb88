"""The advisor's logic and API against the fake engine (whose prompt logprobs make code look
strange and prose plain); tests/integration/test_advisor_e2e.py measures the real SmolLM2."""

from __future__ import annotations

import json

from tests.helpers.api import indexed
from tests.helpers.app import ROOT, assert_error

PROGRAMS = [
    json.loads(line)["messages"][-1]["content"]
    for line in (ROOT / "examples/dsl/data/train.jsonl").read_text().splitlines()[:12]
]
PROSE = [
    "Customers may return unused items within 45 days of delivery for a full refund to the "
    "original payment method, provided the items are in their original packaging.",
    "Orders placed before two in the afternoon on a weekday leave the warehouse the same day, "
    "and standard shipping takes between two and four business days.",
]


def advise(client, headers, **body):
    r = client.post("/v1/advisor", headers=headers, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_no_private_data_means_prompt(client, tenant, fake_engine):
    _, headers = tenant
    fake_engine.requests.clear()
    out = advise(client, headers)
    assert out["recommendation"] == "prompt" and out["familiarity"] is None
    assert "no private data" in out["reasons"][0]
    assert not fake_engine.requests, "nothing to measure: no engine call"


def test_code_no_model_knows_means_fine_tune(client, tenant):
    _, headers = tenant
    training = (ROOT / "examples/dsl/data/train.jsonl").read_text()
    out = advise(client, headers, sample_texts=PROGRAMS, training_file=training)
    fam = out["familiarity"]
    assert out["recommendation"] == "fine_tune", out
    assert fam["ratio"] >= fam["unfamiliar_ratio"] and not fam["knows_domain"]
    assert fam["perplexity"] > fam["reference_perplexity"]
    assert out["training_data"]["passes"] is True
    assert any("passes the data check" in r for r in out["reasons"])


def test_readable_prose_means_rag(client, tenant):
    _, headers = tenant
    out = advise(client, headers, sample_texts=PROSE)
    assert out["recommendation"] == "rag", out
    assert out["familiarity"]["knows_domain"] is True
    assert out["familiarity"]["ratio"] < out["familiarity"]["unfamiliar_ratio"]


def test_the_tenants_documents_are_sampled_and_keep_rag_beside_the_adapter(client, tenant):
    _, headers = tenant
    indexed(client, headers, "skerry.md", ("\n\n".join(PROGRAMS)).encode())
    out = advise(client, headers)
    assert out["familiarity"]["source"] == "documents"
    assert out["recommendation"] == "fine_tune+rag" and out["knowledge_base"]["documents"] == 1


def test_a_bad_training_file_is_reported(client, tenant):
    _, headers = tenant
    dupes = "".join(json.dumps({"prompt": "x?", "completion": "y"}) + "\n" for _ in range(10))
    out = advise(client, headers, sample_texts=PROGRAMS, training_file=dupes)
    assert out["training_data"]["passes"] is False
    assert any("fails the data check" in r for r in out["reasons"])
    r = client.post("/v1/advisor", headers=headers, json={"training_file": "{not json"})
    assert_error(r, 422, "invalid_training_data")


def test_advisor_needs_a_tenant(client, admin):
    assert_error(client.post("/v1/advisor", headers=admin, json={}), 403, "tenant_key_required")
