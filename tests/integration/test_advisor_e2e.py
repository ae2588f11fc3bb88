"""The advisor on real text through the real vLLM's prompt logprobs: fine-tuning for the DSL's
code, RAG for prose policy documents SmolLM2 can read, prompt for a tenant with no private
data. The figures are asserted in direction, not as magic numbers."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers.app import ROOT

pytestmark = pytest.mark.integration

EX = ROOT / "examples"


def advise(server, key: str, **body) -> dict:
    r = httpx.post(f"{server.url}/v1/advisor", headers={"Authorization": f"Bearer {key}"},
                   json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_advisor_follows_the_decision_guide(server):
    train = (EX / "dsl/data/train.jsonl").read_text()
    programs = [json.loads(line)["messages"][-1]["content"] for line in train.splitlines()[:16]]
    prose = [
        p.strip()
        for doc in sorted((EX / "policy_docs/docs").glob("*.md"))
        for p in doc.read_text().split("\n\n")
        if len(p.strip()) > 80
    ]

    dsl = advise(server, server.new_tenant("adv-dsl"), sample_texts=programs, training_file=train)
    docs = advise(server, server.new_tenant("adv-docs"), sample_texts=prose)
    plain = advise(server, server.new_tenant("adv-plain"))

    assert dsl["recommendation"] == "fine_tune", dsl
    assert dsl["training_data"]["passes"] is True
    assert docs["recommendation"] == "rag", docs
    assert plain["recommendation"] == "prompt", plain
    # the figures behind them, in direction
    fd, fp = dsl["familiarity"], docs["familiarity"]
    assert fd["reference_perplexity"] == fp["reference_perplexity"]  # one reference, measured once
    assert fd["perplexity"] > 2 * fp["perplexity"], (fd, fp)
    assert fd["ratio"] >= fd["unfamiliar_ratio"] > fp["ratio"]
    assert fp["ratio"] > 1, "company prose is still less predictable than the reference"
