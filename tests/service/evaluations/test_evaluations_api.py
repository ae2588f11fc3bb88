"""Eval sets and evaluations through the HTTP API, against the fake engine (it echoes the system
prompt and the question, so an answer holds the retrieved context exactly when the path retrieved):
what an evaluation reports, that items run through the chat path, each bad input with its code,
and that an interrupted evaluation finishes with every item counted once. The same flow through
the real vLLM is in tests/integration/test_evaluations.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi.testclient import TestClient

from core.registry.models import Evaluation
from service.app import create_app
from service.evaluations.runner import EvaluationRunner
from tests.helpers import adapter_service as adapters_api
from tests.helpers.api import indexed, wait_evaluation
from tests.helpers.app import assert_error, make_settings, new_tenant

FACT = "The harbour master's office code is QX-7731. The office opens at dawn."
ITEMS = [
    {"id": f"q{i}", "query": f"What is the harbour master's office code? ({i})",
     "checks": {"contains": ["QX-7731"]}, "documents": ["harbour"]}
    for i in range(8)
]
GRAMMAR = 'start: "echo" /.+/s\n'


@pytest.fixture
def kb(client):
    tenant_id, key = new_tenant(client)
    indexed(client, key, "harbour.txt", FACT, document_id="harbour")
    return tenant_id, key


def test_rag_beats_prompt_on_documents_only_knowledge_and_is_recommended(client, kb, fake_engine):
    _, key = kb
    r = client.post("/v1/eval-sets", headers=key, json={"name": "harbour", "items": ITEMS})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["items"] == 8 and created["id"].startswith("evs_")
    fake_engine.requests.clear()
    r = client.post("/v1/evaluations", headers=key,
                    json={"eval_set": created["id"], "arms": ["prompt", "rag"], "max_tokens": 16})
    assert r.status_code == 202 and r.json()["state"] == "queued"
    ev = wait_evaluation(client, key, r.json()["id"])
    assert ev["state"] == "succeeded", ev
    assert ev["progress"] == {"done": 16, "total": 16}
    arms = {a["arm"]: a for a in ev["arms"]}
    assert arms["rag"]["passed"] == 8 and arms["prompt"]["passed"] == 0
    assert arms["rag"]["ci95"][0] > 0.6 and arms["prompt"]["ci95"][1] < 0.4
    assert arms["rag"]["retrieval_hit_rate"] == 1.0 and arms["prompt"]["retrieval_hit_rate"] == 0.0
    assert arms["rag"]["paths"] == {"rag": 8} and arms["prompt"]["paths"] == {"prompt": 8}
    assert arms["rag"]["checks"] == {"contains": 1.0}
    assert arms["rag"]["tokens"]["prompt"] > 0 and arms["rag"]["latency_ms"]["p95"] > 0
    (cmp,) = ev["comparisons"]
    assert (cmp["a"], cmp["b"], cmp["verdict"]) == ("prompt", "rag", "b_better")
    assert cmp["p_value"] == pytest.approx(2 / 2**8)
    assert ev["recommendation"]["arm"] == "rag"
    assert "detectably worse" in ev["recommendation"]["reason"]
    # every item went to the engine as an application's request would, greedy
    sent = [b for b in fake_engine.requests if "messages" in b]
    assert len(sent) == 16 and {b["temperature"] for b in sent} == {0}
    assert {b["max_tokens"] for b in sent} == {16}
    lines = client.get(f"/v1/evaluations/{ev['id']}/items", headers=key)
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(x) for x in lines.text.splitlines()]
    assert len(rows) == 16 and {r["arm"] for r in rows} == {"prompt", "rag"}
    assert all(r["passed"] == (r["arm"] == "rag") for r in rows)
    assert all(r["route"]["path"] == r["arm"] for r in rows)
    listed = client.get("/v1/evaluations", headers=key).json()["data"]
    assert [e["id"] for e in listed] == [ev["id"]]
    assert listed[0]["recommendation"]["arm"] == "rag"


def test_general_questions_recommend_prompt(client, kb):
    _, key = kb
    items = [{"query": f"Say hello {i}", "checks": {"contains": ["hello"]}} for i in range(5)]
    s = client.post("/v1/eval-sets", headers=key, json={"name": "general", "items": items}).json()
    r = client.post("/v1/evaluations", headers=key,
                    json={"eval_set": s["id"], "arms": ["rag", "prompt", "auto"]})
    ev = wait_evaluation(client, key, r.json()["id"])
    assert [a["pass_rate"] for a in ev["arms"]] == [1.0, 1.0, 1.0]
    assert {c["verdict"] for c in ev["comparisons"]} == {"no_difference"}
    assert ev["recommendation"]["arm"] == "prompt"
    assert "no other arm is detectably better" in ev["recommendation"]["reason"]


def test_an_adapter_arm_runs_on_that_adapter_and_a_pinned_version(tmp_path, fake_engine):
    with adapters_api.make_client(tmp_path, [fake_engine]) as client:
        _, key = new_tenant(client)
        for _ in range(2):
            r = adapters_api.register(client, key, adapters_api.archive(tmp_path))
            assert r.status_code == 201, r.text
        items = [{"query": f"Write rule {i}", "checks": {"grammar": True}} for i in range(3)]
        s = client.post("/v1/eval-sets", headers=key,
                        json={"name": "lang", "items": items, "grammar": GRAMMAR}).json()
        assert s["grammar"] is True
        arms = ["adapter_rag:warelang", "adapter_rag:warelang@1"]
        r = client.post("/v1/evaluations", headers=key, json={"eval_set": s["id"], "arms": arms})
        ev = wait_evaluation(client, key, r.json()["id"])
        assert ev["state"] == "succeeded", ev
        rows = [json.loads(x) for x in
                client.get(f"/v1/evaluations/{ev['id']}/items", headers=key).text.splitlines()]
        served = {r["arm"]: {x["route"]["adapter"] for x in rows if x["arm"] == r["arm"]}
                  for r in rows}
        assert served == {"adapter_rag:warelang": {"warelang@2"},
                          "adapter_rag:warelang@1": {"warelang@1"}}
        assert all(r["passed"] and r["checks"] == {"grammar": True} for r in rows)
        assert all(r["output"].startswith("echo[") for r in rows)  # the adapter answered
        # a version that does not exist, an adapter that does not exist: refused at once
        for arm in ("adapter_rag:warelang@9", "adapter_rag:nope"):
            r = client.post("/v1/evaluations", headers=key, json={"eval_set": s["id"],
                                                                  "arms": [arm]})
            assert_error(r, 404, "model_not_found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "x", "items": []}, 422, "empty_eval_set"),
        ({"name": "x", "items": [{"query": "q", "checks": {"vibes": True}}]}, 422,
         "unknown_check_kind"),
        ({"name": "x", "items": [{"query": "q", "checks": {"grammar": True}}],
          "grammar": "start: ("}, 422, "invalid_grammar"),
        ({"name": "x", "items": [{"query": "q"}]}, 422, "invalid_eval_set"),
        ({"name": "x", "items": [{"query": "q", "checks": {"exact": "a"}}, 7]}, 422,
         "invalid_eval_set"),
        ({"items": []}, 422, "invalid_eval_set"),
    ],
)
def test_bad_eval_sets_each_have_a_code_and_store_nothing(client, tenant, body, status, code):
    _, key = tenant
    assert_error(client.post("/v1/eval-sets", headers=key, json=body), status, code)
    assert client.get("/v1/eval-sets", headers=key).json()["data"] == []


def test_an_eval_set_as_a_jsonl_upload(client, tenant):
    _, key = tenant
    data = "\n".join(json.dumps(i) for i in ITEMS[:3]).encode()
    r = client.post("/v1/eval-sets", headers=key, files={"file": ("set.jsonl", data)},
                    data={"name": "from file"})
    assert r.status_code == 201, r.text
    assert r.json()["items"] == 3
    bad = client.post("/v1/eval-sets", headers=key, files={"file": ("set.jsonl", b"{nope\n")},
                      data={"name": "bad"})
    assert_error(bad, 422, "invalid_eval_set")
    assert "line 1" in bad.json()["error"]["message"]
    assert_error(client.post("/v1/eval-sets", headers=key, files={"file": ("s.jsonl", data)}),
                 400, "missing_name")
    assert [s["name"] for s in client.get("/v1/eval-sets", headers=key).json()["data"]] == [
        "from file"]


def test_bad_evaluations_and_other_tenants_sets(client, tenant):
    _, key = tenant
    s = client.post("/v1/eval-sets", headers=key, json={"name": "x", "items": ITEMS[:2]}).json()
    post = lambda body: client.post("/v1/evaluations", headers=key, json=body)  # noqa: E731
    assert_error(post({"eval_set": s["id"], "arms": ["prompt", "gpt-5"]}), 422, "unknown_arm")
    assert_error(post({"eval_set": s["id"], "arms": ["adapter_rag:"]}), 422, "unknown_arm")
    assert_error(post({"eval_set": s["id"], "arms": ["adapter_rag:x@0"]}), 422, "unknown_arm")
    assert_error(post({"eval_set": s["id"], "arms": ["rag", "rag"]}), 400, "duplicate_arm")
    assert_error(post({"eval_set": s["id"], "arms": ["rag"], "max_tokens": 10**6}), 400,
                 "max_tokens_too_large")
    assert_error(post({"eval_set": "evs_nope", "arms": ["rag"]}), 404, "eval_set_not_found")
    # another tenant sees neither the set nor its evaluation
    ev = post({"eval_set": s["id"], "arms": ["prompt"]}).json()
    _, other = new_tenant(client)
    assert_error(client.get(f"/v1/eval-sets/{s['id']}", headers=other), 404, "eval_set_not_found")
    assert_error(client.post("/v1/evaluations", headers=other,
                             json={"eval_set": s["id"], "arms": ["rag"]}),
                 404, "eval_set_not_found")
    assert_error(client.get(f"/v1/evaluations/{ev['id']}", headers=other), 404,
                 "evaluation_not_found")
    assert_error(client.get(f"/v1/evaluations/{ev['id']}/items", headers=other), 404,
                 "evaluation_not_found")
    assert_error(client.delete(f"/v1/eval-sets/{s['id']}", headers=other), 404,
                 "eval_set_not_found")
    assert client.delete(f"/v1/eval-sets/{s['id']}", headers=key).json()["deleted"] is True
    assert_error(client.get(f"/v1/eval-sets/{s['id']}", headers=key), 404, "eval_set_not_found")


def test_an_interrupted_evaluation_resumes_and_counts_every_item_once(tmp_path, fake_engine):
    """The first process dies after three results (its lease left to run out); a restarted
    service resumes the evaluation and answers only the items not yet recorded."""
    settings = make_settings(tmp_path, [fake_engine.url],
                             evaluations={"lease_s": 0.5, "poll_s": 0.05, "concurrency": 1})
    with TestClient(create_app(settings)) as client:
        _, key = new_tenant(client)
        indexed(client, key, "harbour.txt", FACT, document_id="harbour")
        s = client.post("/v1/eval-sets", headers=key, json={"name": "h", "items": ITEMS}).json()
        state = client.app.state.ragtune
        runner: EvaluationRunner = state.evaluation_runner
        recorded = []
        real_record = runner.store.record

        def record_then_die(evaluation_id, result):
            if len(recorded) == 3:
                raise asyncio.CancelledError  # the process goes away mid-evaluation
            recorded.append(result["item_id"])
            return real_record(evaluation_id, result)

        runner.store.record = record_then_die
        ev = client.post("/v1/evaluations", headers=key,
                         json={"eval_set": s["id"], "arms": ["prompt", "rag"]}).json()
        deadline = time.monotonic() + 30
        while len(recorded) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(recorded) == 3
    with state.registry.session() as sess:
        assert sess.get(Evaluation, ev["id"]).state == "running"  # left as a crash leaves it
    fake_engine.requests.clear()
    with TestClient(create_app(settings)) as client:
        done = wait_evaluation(client, key, ev["id"])
        assert done["state"] == "succeeded", done
        assert done["progress"] == {"done": 16, "total": 16}
        rows = [json.loads(x) for x in
                client.get(f"/v1/evaluations/{ev['id']}/items", headers=key).text.splitlines()]
        assert len({(r["item"], r["arm"]) for r in rows}) == len(rows) == 16
        answered = [b for b in fake_engine.requests if "messages" in b]
        assert len(answered) == 16 - 3  # the recorded three were not asked again
        assert {a["arm"]: a["passed"] for a in done["arms"]} == {"prompt": 0, "rag": 8}


def test_the_eval_cli_uploads_runs_with_progress_and_draws_the_chart(client, kb, tmp_path,
                                                                      monkeypatch):
    from typer.testing import CliRunner

    from service import policy_cli
    from service.cli import app as cli

    _, key = kb
    monkeypatch.setattr(policy_cli, "_CLIENT", client)
    token = key["Authorization"].split()[1]
    data = tmp_path / "harbour.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    up = CliRunner().invoke(cli, ["eval", "sets", "upload", str(data), "--key", token])
    assert up.exit_code == 0, up.output
    set_id = up.output.split()[0]
    assert set_id.startswith("evs_") and "8 items" in up.output
    chart = tmp_path / "chart.svg"
    ran = CliRunner().invoke(cli, ["eval", "run", "--set", set_id, "--arms", "prompt,rag",
                                   "--max-tokens", "16", "--chart", str(chart), "--key", token])
    assert ran.exit_code == 0, ran.output
    assert "recommended: rag" in ran.output and "prompt vs rag" in ran.output
    rag_line = next(x for x in ran.output.splitlines() if x.startswith("rag "))
    assert "8/8" in rag_line and "100%" in rag_line
    svg = chart.read_text()
    assert svg.startswith("<svg") and svg.count("<rect") == 2 and ">rag</text>" in svg
    ev_id = ran.output.split("evaluation ")[1].split(":")[0]
    items = tmp_path / "items.jsonl"
    shown = CliRunner().invoke(cli, ["eval", "show", ev_id, "--json", "--items", str(items),
                                     "--key", token])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["recommendation"]["arm"] == "rag"
    assert len(items.read_text().splitlines()) == 16
    bad = CliRunner().invoke(cli, ["eval", "run", "--set", set_id, "--arms", "gpt", "--key", token])
    assert bad.exit_code == 1 and "unknown_arm" in bad.output


def test_the_advisor_says_what_the_latest_evaluation_measured(client, kb):
    """Measured beats estimated: with no evaluation the advisor estimates (perplexity); after one,
    its recommendation is the evaluation's, and the estimate stays in the reasons."""
    _, key = kb
    before = client.post("/v1/advisor", headers=key, json={}).json()
    assert before["basis"] == "estimate" and before["evaluation"] is None
    s = client.post("/v1/eval-sets", headers=key, json={"name": "h", "items": ITEMS}).json()
    ev = client.post("/v1/evaluations", headers=key,
                     json={"eval_set": s["id"], "arms": ["prompt", "rag"]}).json()
    wait_evaluation(client, key, ev["id"])
    after = client.post("/v1/advisor", headers=key, json={}).json()
    assert after["basis"] == "evaluation" and after["recommendation"] == "rag"
    assert after["evaluation"]["id"] == ev["id"] and after["evaluation"]["arm"] == "rag"
    assert after["reasons"][0].startswith(f"measured on the tenant's own questions (evaluation "
                                          f"{ev['id']})")
    estimate = before["recommendation"]
    assert after["reasons"][1].startswith(f"the estimate without it said {estimate}")
    assert after["familiarity"] == before["familiarity"]


def test_labels_from_an_evaluation_are_the_simplest_arm_that_passed():
    from service.calibrate import labels_from_evaluation

    line = lambda item, arm, ok, q="q": {"item": item, "arm": arm, "passed": ok,  # noqa: E731
                                         "query": f"{q}{item}"}
    items = [
        line("1", "prompt", True), line("1", "rag", True),  # both: the simpler one
        line("2", "prompt", False), line("2", "rag", True), line("2", "adapter_rag:x", True),
        line("3", "prompt", False), line("3", "adapter_rag:x@2", True),
        line("4", "prompt", False), line("4", "rag", False),  # nothing passed: no label
        line("5", "auto", True),  # auto routes, it is not a path
        line("6", "rag", True, q=None) | {"query": None},  # its set is gone: no question
    ]
    assert labels_from_evaluation(items) == [
        {"query": "q1", "path": "prompt"}, {"query": "q2", "path": "rag"},
        {"query": "q3", "path": "adapter_rag"},
    ]


def test_calibrate_learns_thresholds_from_an_evaluations_outcomes(client, kb, monkeypatch):
    from typer.testing import CliRunner

    from service import policy_cli
    from service.cli import app as cli

    tenant_id, key = kb
    general = [{"id": f"g{i}", "query": f"Say hello to me, friend number {i}",
                "checks": {"contains": ["hello"], "not_contains": ["QX-7731"]}} for i in range(4)]
    s = client.post("/v1/eval-sets", headers=key,
                    json={"name": "mixed", "items": ITEMS[:4] + general}).json()
    ev = client.post("/v1/evaluations", headers=key,
                     json={"eval_set": s["id"], "arms": ["prompt", "rag"]}).json()
    wait_evaluation(client, key, ev["id"])
    lines = [json.loads(x) for x in
             client.get(f"/v1/evaluations/{ev['id']}/items", headers=key).text.splitlines()]
    assert {x["query"] for x in lines} == {i["query"] for i in ITEMS[:4] + general}
    monkeypatch.setattr(policy_cli, "_CLIENT", client)
    result = CliRunner().invoke(cli, [
        "policy", "calibrate", "--tenant", tenant_id, "--evaluation", ev["id"],
        "--key", key["Authorization"].split()[1], "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    assert report["n"] == 8  # 4 labelled rag (only rag passed), 4 prompt (the simpler passed)
    assert report["suggested_accuracy"] >= report["current_accuracy"]
    assert report["suggested_accuracy"] == 1.0, report
