"""Which adapter a chat goes to, against fake engines: `auto` takes the adapter whose examples match
(and the examples of a name registered again after a delete), and a policy in adapter_rag mode
uses the policy's adapter; Responses name adapters as chat does."""

from __future__ import annotations

import json
import time

from tests.helpers.adapter_service import archive, register
from tests.helpers.api import chat
from tests.helpers.app import new_tenant


def test_auto_takes_the_adapter_whose_examples_match(client, tmp_path):
    _, headers = new_tenant(client, {"adapter_match_min": 0.6})
    r = register(client, headers, archive(tmp_path), examples=json.dumps(
        ["Write a WARELANG rule that moves pallets from zone heron to zone kite",
         "WARELANG: pick 12 units of SKU 400123 in zone wren"]))
    assert r.status_code == 201
    near = chat(client, headers, "Write a WARELANG rule moving pallets from heron to kite").json()
    assert near["route"]["path"] == "adapter_rag", near["route"]
    assert near["route"]["adapter"] == "warelang@1"
    assert near["route"]["signals"]["adapter_match"] >= 0.6
    far = chat(client, headers, "What is the capital of France?").json()
    assert far["route"]["path"] == "prompt", far["route"]
    assert far["route"]["signals"]["adapter_match"] < 0.6
    assert "no adapter matches" in far["route"]["reason"]


def test_a_name_registered_again_after_delete_matches_its_new_examples(client, tmp_path):
    """The router caches a version's example vectors; `rules@1` registered again after a
    delete is another version with other examples, and auto must match those. (Named `rules`,
    a word the embedder knows: a made-up name in the query would take the adapter by name.)"""
    _, headers = new_tenant(client, {"adapter_match_min": 0.6})
    query = "Write a WARELANG rule moving pallets from heron to kite"
    r = register(client, headers, archive(tmp_path), name="rules", examples=json.dumps(
        ["Write a WARELANG rule that moves pallets from zone heron to zone kite"]))
    assert r.status_code == 201
    assert chat(client, headers, query).json()["route"]["path"] == "adapter_rag"
    assert client.delete("/v1/adapters/rules", headers=headers).status_code == 204
    deadline = time.monotonic() + 5
    while client.get("/v1/adapters", headers=headers).json()["data"] and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    r = register(client, headers, archive(tmp_path, name="again.tgz"), name="rules",
                 description="Bakes sourdough bread",
                 examples=json.dumps(["How long should sourdough proof overnight?"]))
    assert r.status_code == 201 and r.json()["version"] == 1
    again = chat(client, headers, query).json()["route"]
    assert again["path"] == "prompt", again
    assert again["signals"]["adapter_match"] < 0.6
    bread = chat(client, headers, "How long do I proof sourdough overnight?").json()["route"]
    assert bread["path"] == "adapter_rag" and bread["adapter"] == "rules@1", bread


def test_policy_mode_adapter_rag_uses_the_policys_adapter(client, tmp_path):
    tenant, headers = new_tenant(client, {"mode": "adapter_rag", "adapter": "second"})
    for n in ("first", "second"):
        assert register(client, headers, archive(tmp_path, name=f"{n}.tgz"),
                        name=n).status_code == 201
    out = chat(client, headers).json()
    assert out["route"]["path"] == "adapter_rag" and out["route"]["adapter"] == "second@1"
    assert "policy's adapter" in out["route"]["reason"]


def test_a_query_naming_the_adapter_takes_it_whatever_its_examples(client, tmp_path):
    """"warelang" is no word of the embedder's vocabulary: named in a query it means the
    adapter, though the examples (about bread here) are far from the query."""
    _, headers = new_tenant(client)
    r = register(client, headers, archive(tmp_path), description="Bakes sourdough bread",
                 examples=json.dumps(["How long should sourdough proof overnight?"]))
    assert r.status_code == 201
    named = chat(client, headers, "Translate into Warelang: count zone heron daily").json()
    route = named["route"]
    assert (route["path"], route["adapter"]) == ("adapter_rag", "warelang@1"), route
    assert route["signals"]["adapter_named"] is True and route["signals"]["adapter_match"] < 0.5
    assert "names adapter warelang@1" in route["reason"]
    other = chat(client, headers, "Translate into French: count the sheep daily").json()["route"]
    assert other["path"] == "prompt" and other["signals"]["adapter_named"] is False, other


def test_responses_name_an_adapter_as_chat_does_and_file_search_gives_it_the_store(
    client, tmp_path
):
    """The hybrid path through Responses: `model` = the adapter, and file_search's passages
    reach it (the fake engine tags an adapter's answers and echoes what it was given)."""
    from tests.helpers.api import polled, sdk

    _, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    oc = sdk(client, headers)
    f = oc.files.create(file=("zones.txt", b"Frozen goods are picked from zone FZ9 only."),
                        purpose="assistants")
    vs = oc.vector_stores.create(name="zones")
    polled(oc, vs.id, f.id)
    r = oc.responses.create(model="warelang", input="Which zone are frozen goods picked from?",
                            tools=[{"type": "file_search", "vector_store_ids": [vs.id]}])
    route = r.model_extra["route"]
    assert (route["path"], route["adapter"], r.model) == ("adapter_rag", "warelang@1", "warelang")
    assert r.output_text.startswith("echo[") and "--warelang--v1]" in r.output_text
    assert "FZ9" in r.output_text
    assert r.output[-1].content[0].annotations[0].file_id == f.id
    # The base model by name: the policy decides, as `auto` does.
    r = oc.responses.create(model="HuggingFaceTB/SmolLM2-135M-Instruct", input="hello")
    assert r.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
