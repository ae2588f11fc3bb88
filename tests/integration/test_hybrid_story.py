"""The hybrid path composes, through the real vLLM: an adapter trained during the session by
`ragtune adapters train --context-docs` (RAFT) writes a small made-up language, and retrieval
supplies the facts it needs from the tenant's uploaded documents.

- A fact that exists only in the tenant's documents (an item code) appears in the adapter's
  answer, in the language's syntax.
- The same adapter registered by a tenant without documents does not produce it: the fact came
  from retrieval, not from the adapter's weights.
- The update story: a new version of the document renames the code; with no retraining the
  answer uses the new code and no longer the old one.

The language ("reserve orders"): `reserve <CODE> x<QTY> @S<STORE>;`. The instruction names a
product by name and gives the quantity and store; the code is on the product's shelf card only.
Training products and codes never occur in the test's documents.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.helpers.api import wait_evaluation, wait_job
from tests.helpers.server import ragtune_command

pytestmark = pytest.mark.integration

SYNTAX = re.compile(r"^reserve ([A-Z]{2}-\d{4}) x(\d+) @S(\d+);$")
ADJ = ["amber", "brass", "cedar", "copper", "coral", "denim", "ember", "flint", "frost",
       "garnet", "hazel", "indigo", "ivory", "jade", "lemon", "linen", "maple", "mint", "olive",
       "onyx", "pearl", "plum", "quartz", "rust", "sable", "slate", "teal", "topaz", "umber"]
NOUN = ["lantern", "kettle", "basket", "blanket", "candle", "jar", "ladle", "mirror", "pillow",
        "rug", "stool", "teapot", "tray", "vase", "whisk", "bowl"]
LETTERS = "BCDFGHKLMNPRSTVZ"

# The tenant's own product, never seen in training: its code is only in the uploaded document.
PRODUCT = "saffron gazebo"
CODE_V1, CODE_V2 = "QW-7302", "JX-5816"
QUESTION = f"Reserve 3 of the {PRODUCT} for store 12."
EXPECTED = {1: f"reserve {CODE_V1} x3 @S12;", 2: f"reserve {CODE_V2} x3 @S12;"}
# Neighbours on the same shelf: retrieval must pick the right card among them.
NEIGHBOURS = [("velvet hammock", "TB-4410"), ("cobalt trellis", "HN-2298")]
TRAIN_ARGS = ["--rank", "8", "--max-steps", "40", "--batch-size", "4", "--max-len", "320",
              "--lr", "2e-3", "--context-fraction", "0.9", "--top-k", "2",
              "--oracle-free-share", "0.1", "--held-out", "0.05"]
MAX_TOKENS = 24
JOB_TIMEOUT_S = 180


def shelf_card(name: str, code: str, aisle: int) -> str:
    return f"Shelf card: {name}.\nItem code {code}. Stored in aisle {aisle}.\n"


def training_set(root: Path) -> tuple[Path, Path]:
    """40 products on shelf cards (the context documents) and 80 reserve orders for them."""
    rng = random.Random(7)
    names = sorted({f"{a} {n}" for a in ADJ for n in NOUN})
    products = [(name, f"{rng.choice(LETTERS)}{rng.choice(LETTERS)}-{rng.randrange(1000, 9999)}")
                for name in rng.sample(names, 40)]
    docs = root / "cards"
    docs.mkdir()
    for name, code in products:
        (docs / f"{name.replace(' ', '-')}.txt").write_text(
            shelf_card(name, code, rng.randrange(1, 20)))
    rows = []
    for name, code in products:
        for _ in range(2):
            qty, store = rng.randrange(1, 10), rng.randrange(1, 40)
            rows.append({"messages": [
                {"role": "user", "content": f"Reserve {qty} of the {name} for store {store}."},
                {"role": "assistant", "content": f"reserve {code} x{qty} @S{store};"},
            ]})
    rng.shuffle(rows)
    data = root / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, docs


def _env(server, base_model_dir) -> dict:
    return {**os.environ, "RAGTUNE_MODEL_DIR": str(base_model_dir), "HF_HUB_OFFLINE": "1",
            "RAGTUNE_URL": server.url}


@pytest.fixture(scope="module")
def raft_adapter(server, base_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raft")
    data, docs = training_set(root)
    out = root / "adapter"
    done = subprocess.run(
        [*ragtune_command(), "adapters", "train", "--data", str(data), "--out", str(out),
         "--context-docs", str(docs), *TRAIN_ARGS],
        env=_env(server, base_model_dir), capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "ragtune_training.json").read_text())
    assert record["context"]["top_k"] == 2, record
    return out


def register(server, base_model_dir, key: str, folder: Path) -> dict:
    done = subprocess.run(
        [*ragtune_command(), "adapters", "register", str(folder), "--name", "orders",
         "--description", "reserve orders", "--examples", "[]", "--key", key],
        env=_env(server, base_model_dir), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def upload_cards(http: httpx.Client, headers: dict, cards: list[tuple[str, str]]) -> dict:
    """One document per shelf card (its id derived from the file name, as for any upload)."""
    files = [("file", (f"{name.replace(' ', '-')}.txt", shelf_card(name, code, 6).encode(),
                       "text/plain")) for name, code in cards]
    r = http.post("/v1/documents", headers=headers, files=files)
    assert r.status_code == 202, r.text
    return wait_job(http, headers, r.json()["job_id"], timeout=JOB_TIMEOUT_S)


def ask(http: httpx.Client, headers: dict) -> dict:
    r = http.post("/v1/chat/completions", headers=headers, json={
        "model": "orders", "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0, "max_tokens": MAX_TOKENS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"]["path"] == "adapter_rag", body["route"]
    return body


def answer(body: dict) -> str:
    return body["choices"][0]["message"]["content"].strip()


def test_the_fact_comes_from_retrieval_and_follows_the_document(server, base_model_dir,
                                                                 raft_adapter):
    key = server.new_tenant("hybrid-story")
    headers = {"Authorization": f"Bearer {key}"}
    assert register(server, base_model_dir, key, raft_adapter)["status"] == "ready"
    bare_key = server.new_tenant("hybrid-story-nodocs")
    bare = {"Authorization": f"Bearer {bare_key}"}
    register(server, base_model_dir, bare_key, raft_adapter)
    with httpx.Client(base_url=server.url, timeout=300) as http:
        job = upload_cards(http, headers, [(PRODUCT, CODE_V1), *NEIGHBOURS])
        assert job["state"] == "succeeded", job

        body = ask(http, headers)
        # served with the context the adapter was trained with, and says so
        signals = body["route"]["signals"]
        assert signals.get("top_k") == 2 and signals.get("context_from") == "adapter", signals
        assert any(CODE_V1 in c["text"] for c in body["citations"]), body["citations"]
        text = answer(body)
        assert SYNTAX.match(text), text  # the adapter's language
        assert text == EXPECTED[1], text  # with the fact from the tenant's document

        # the same adapter, no documents: the code is nowhere to be found
        alone = ask(http, bare)
        assert alone["citations"] == []
        assert CODE_V1 not in answer(alone), answer(alone)

        # a new version renames the code; no retraining
        job = upload_cards(http, headers, [(PRODUCT, CODE_V2)])  # its version 2
        assert job["state"] == "succeeded", job
        body = ask(http, headers)
        text = answer(body)
        assert SYNTAX.match(text), text
        assert CODE_V2 in text and CODE_V1 not in text, text
        cited = {c["document_id"]: c["version"] for c in body["citations"]}
        assert cited.get(PRODUCT.replace(" ", "-")) == 2, body["citations"]


# The evaluation harness on the same session adapter (issue 14): each path measured on the
# tenant's own questions, through the real vLLM, and the simplest arm that is not detectably
# worse than the best recommended.
EVAL_PRODUCTS = [("saffron gazebo", "QW-7302"), ("velvet hammock", "TB-4410"),
                 ("cobalt trellis", "HN-2298"), ("walnut sundial", "PK-3391"),
                 ("silver birdbath", "MC-8127"), ("granite planter", "FD-6054"),
                 ("ochre pergola", "LZ-4763"), ("russet lantern", "GV-1938"),
                 ("cyan windchime", "RB-5502"), ("bronze bench", "NS-7245")]
DOOR_CODES = [("Orbin Foods cold storage", "QX-4471"), ("Harlow bakery flour", "ZK-2093"),
              ("Tessel dairy cheese", "VM-6610"), ("Brandt meat ageing", "LP-3187"),
              ("Quill pharmacy vault", "DW-5524"), ("Marrow wine cellar", "HT-7302"),
              ("Osprey fish chilling", "CN-1948"), ("Fennick spice drying", "RB-8265"),
              ("Gable ice cream freezer", "SJ-4056"), ("Pellow server", "UY-2731")]
ORDER_GRAMMAR = 'start: ORDER+\nORDER: /reserve [A-Z]{2}-\\d{4} x\\d+ @S\\d+;/\n%ignore /\\s+/\n'


def evaluate(http: httpx.Client, headers: dict, items: list[dict], arms: list[str],
             grammar: str | None = None, max_tokens: int = MAX_TOKENS) -> dict:
    s = http.post("/v1/eval-sets", headers=headers,
                  json={"name": "e2e", "items": items, "grammar": grammar})
    assert s.status_code == 201, s.text
    r = http.post("/v1/evaluations", headers=headers,
                  json={"eval_set": s.json()["id"], "arms": arms, "max_tokens": max_tokens})
    assert r.status_code == 202, r.text
    ev = wait_evaluation(http, headers, r.json()["id"], timeout=600)
    assert ev["state"] == "succeeded", ev
    assert ev["progress"]["done"] == ev["progress"]["total"] == len(items) * len(arms)
    return ev


def test_an_evaluation_measures_each_path_and_recommends_the_simplest_good_one(
    server, base_model_dir, raft_adapter
):
    key = server.new_tenant("eval-story")
    headers = {"Authorization": f"Bearer {key}"}
    register(server, base_model_dir, key, raft_adapter)
    with httpx.Client(base_url=server.url, timeout=300) as http:
        job = upload_cards(http, headers, EVAL_PRODUCTS)
        assert job["state"] == "succeeded", job
        # the made-up language: only the adapter writes it; the codes come from the cards
        orders = [{"query": f"Reserve {i % 7 + 2} of the {name} for store {i + 3}.",
                   "checks": {"grammar": True}} for i, (name, _) in enumerate(EVAL_PRODUCTS)]
        ev = evaluate(http, headers, orders, ["prompt", "rag", "adapter_rag:orders"],
                      ORDER_GRAMMAR)
        rates = {a["arm"]: a["pass_rate"] for a in ev["arms"]}
        assert rates["adapter_rag:orders"] >= 0.6 > rates["prompt"], rates
        verdicts = {(c["a"], c["b"]): c["verdict"] for c in ev["comparisons"]}
        assert verdicts[("prompt", "adapter_rag:orders")] == "b_better", ev["comparisons"]
        assert verdicts[("rag", "adapter_rag:orders")] == "b_better", ev["comparisons"]
        assert ev["recommendation"]["arm"] == "adapter_rag:orders", ev["recommendation"]

        # documents-only knowledge: door codes, one note each, nowhere in the base model
        notes = [(f"the {place} room", code) for place, code in DOOR_CODES]
        files = [("file", (f"door-{i}.txt", f"The door code for {room} is {code}. Staff only."
                           .encode(), "text/plain")) for i, (room, code) in enumerate(notes)]
        r = http.post("/v1/documents", headers=headers, files=files)
        assert r.status_code == 202, r.text
        assert wait_job(http, headers, r.json()["job_id"], timeout=JOB_TIMEOUT_S)["state"] == (
            "succeeded")
        facts = [{"query": f"What is the door code for {room}?", "checks": {"contains": [code]},
                  "documents": [f"door-{i}"]} for i, (room, code) in enumerate(notes)]
        ev = evaluate(http, headers, facts, ["prompt", "rag"], max_tokens=40)
        arms = {a["arm"]: a for a in ev["arms"]}
        assert arms["rag"]["pass_rate"] > arms["prompt"]["pass_rate"] == 0, arms
        assert arms["rag"]["retrieval_hit_rate"] >= 0.8, arms["rag"]
        assert ev["comparisons"][0]["verdict"] == "b_better", ev["comparisons"]
        assert ev["recommendation"]["arm"] == "rag", ev["recommendation"]

        # general questions: retrieval adds nothing detectable, so the simplest path is advised
        general = [{"query": "What is the capital of France?", "checks": {"contains": ["Paris"]}},
                   {"query": "What is the capital of Italy?", "checks": {"contains": ["Rome"]}},
                   {"query": "What colour is the sky on a clear day?",
                    "checks": {"contains": ["blue"]}}]
        ev = evaluate(http, headers, general, ["prompt", "rag"])
        assert {a["arm"]: a["passed"] for a in ev["arms"]}["prompt"] >= 2, ev["arms"]
        assert ev["comparisons"][0]["verdict"] == "no_difference", ev
        assert ev["recommendation"]["arm"] == "prompt", ev["recommendation"]


# Gated releases (issue 14): a version trained on shuffled answers (each order's answer is
# another order's) writes the language but not the order asked for; its gate, on the tenant's
# own set, keeps it rejected while version 1 serves every request; the good adapter passes.
GATE_ALLOWANCE = 0.1  # a same-weights version may differ by an item (batching is not bitwise)
SHUFFLED_ARGS = ["--rank", "8", "--max-steps", "30", "--batch-size", "4", "--max-len", "320",
                 "--lr", "2e-3", "--held-out", "0.05"]


@pytest.fixture(scope="module")
def shuffled_adapter(server, base_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shuffled")
    data, _ = training_set(root)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    answers = [r["messages"][1]["content"] for r in rows]
    answers = answers[1:] + answers[:1]  # every answer moved to another row
    for row, wrong in zip(rows, answers, strict=True):
        row["messages"][1]["content"] = wrong
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "adapter"
    # Without retrieved context (half the training time): it writes the language from memory.
    done = subprocess.run(
        [*ragtune_command(), "adapters", "train", "--data", str(data), "--out", str(out),
         *SHUFFLED_ARGS],
        env=_env(server, base_model_dir), capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def register_gated(server, base_model_dir, key: str, folder: Path, set_id: str):
    return subprocess.run(
        [*ragtune_command(), "adapters", "register", str(folder), "--name", "orders",
         "--description", "reserve orders", "--examples", "[]", "--key", key,
         "--gate-set", set_id, "--gate-min-delta", str(GATE_ALLOWANCE)],
        env=_env(server, base_model_dir), capture_output=True, text=True, timeout=600,
    )


@pytest.mark.timeout(1800)  # two adapters trained in its fixtures, when it runs alone
def test_a_gate_rejects_a_version_trained_on_shuffled_answers(server, base_model_dir,
                                                               raft_adapter, shuffled_adapter):
    key = server.new_tenant("gate-story")
    headers = {"Authorization": f"Bearer {key}"}
    register(server, base_model_dir, key, raft_adapter)
    with httpx.Client(base_url=server.url, timeout=300) as http:
        assert upload_cards(http, headers, EVAL_PRODUCTS)["state"] == "succeeded"
        items = [{"query": f"Reserve {i % 7 + 2} of the {name} for store {i + 3}.",
                  "checks": {"grammar": True, "contains": [f"x{i % 7 + 2} @S{i + 3};"]}}
                 for i, (name, _) in enumerate(EVAL_PRODUCTS)]
        s = http.post("/v1/eval-sets", headers=headers,
                      json={"name": "orders", "items": items, "grammar": ORDER_GRAMMAR})
        assert s.status_code == 201, s.text
        set_id = s.json()["id"]

        stop, served = threading.Event(), []

        def traffic() -> None:  # an application's requests while the gate runs
            with httpx.Client(base_url=server.url, timeout=300) as app:
                while not stop.is_set():
                    r = app.post("/v1/chat/completions", headers=headers, json={
                        "model": "orders", "messages": [{"role": "user", "content": QUESTION}],
                        "temperature": 0, "max_tokens": 8})
                    served.append((r.status_code, r.json().get("route", {}).get("adapter")))

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            done = register_gated(server, base_model_dir, key, shuffled_adapter, set_id)
        finally:
            stop.set()
            thread.join(300)
        assert done.returncode != 0 and "gate_failed" in done.stderr, done.stdout + done.stderr
        assert served and set(served) == {(200, "orders@1")}, served

        detail = http.get("/v1/adapters/orders", headers=headers).json()
        assert detail["version"] == 1
        (v2,) = [v for v in detail["versions"] if v["version"] == 2]
        gate = v2["gate"]
        assert v2["status"] == "rejected" and gate["passed"] is False, v2
        assert gate["baseline_pass_rate"] >= 0.6, gate  # the good version does the task
        assert gate["delta"] < -GATE_ALLOWANCE, gate

        # the good adapter again, as version 3: as good as version 1, so traffic moves to it
        done = register_gated(server, base_model_dir, key, raft_adapter, set_id)
        assert done.returncode == 0, done.stdout + done.stderr
        body = json.loads(done.stdout)
        assert body["version"] == 3 and body["gate"]["passed"] is True, body
        assert ask(http, headers)["route"]["adapter"] == "orders@3"
