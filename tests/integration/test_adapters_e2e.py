"""Adapters through the real vLLM: trained by `ragtune adapters train` during the session,
registered with `ragtune adapters register`, served through the official openai client; a hot
swap under load with zero failed requests; an engine restart that reconcile recovers from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers.server import ragtune_command

pytestmark = pytest.mark.integration

# Two behaviours no base model has: item codes in a made-up format, one per version.
FORMATS = {"v1": ("ZX", 37, 101, "QV"), "v2": ("QQ", 53, 97, "ZB")}
TRAIN_ARGS = ["--rank", "4", "--max-steps", "16", "--batch-size", "4", "--max-len", "48",
              "--lr", "3e-3"]
QUESTION = "Code for item 7?"


def _env(server, base_model_dir) -> dict:
    return {**os.environ, "RAGTUNE_MODEL_DIR": str(base_model_dir), "HF_HUB_OFFLINE": "1",
            "RAGTUNE_URL": server.url}


@pytest.fixture(scope="module")
def trained(server, base_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for tag, (pre, mul, mod, post) in FORMATS.items():
        data = root / f"{tag}.jsonl"
        rows = [
            {"prompt": f"Code for item {i}?", "completion": f"{pre}-{i * mul % mod}-{post}"}
            for i in range(60)
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[tag] = root / tag
        subprocess.run(
            [*ragtune_command(), "adapters", "train", "--data", str(data), "--out", str(out[tag]),
             *TRAIN_ARGS],
            env=_env(server, base_model_dir), check=True, timeout=900,
            stdout=subprocess.DEVNULL,
        )
    return out


def register_cli(server, base_model_dir, key: str, folder: Path, name: str) -> dict:
    done = subprocess.run(
        [*ragtune_command(), "adapters", "register", str(folder), "--name", name,
         "--description", "item codes", "--examples", json.dumps([QUESTION]), "--key", key],
        env=_env(server, base_model_dir), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ask(client: openai.OpenAI, model: str = "auto"):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=8,
    )


def engine_models(server) -> set[str]:
    return {m["id"] for m in httpx.get(f"{server.engine_url}/v1/models").json()["data"]}


def test_trained_adapter_serves_and_changes_the_output(server, base_model_dir, trained):
    key = server.new_tenant("codes-tenant")
    body = register_cli(server, base_model_dir, key, trained["v1"], "codes")
    assert (body["name"], body["version"], body["status"], body["rank"]) == ("codes", 1,
                                                                             "ready", 4)
    assert "codes-tenant--codes--v1" in engine_models(server)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)

    base = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=8, extra_body={"route": "prompt"},
    )
    assert base.model_extra["route"]["path"] == "prompt"
    assert not base.choices[0].message.content.startswith("ZX-"), base.choices[0].message
    # auto: the question is the adapter's declared example, so the policy takes the adapter
    auto = ask(client)
    assert auto.model_extra["route"]["path"] == "adapter_rag", auto.model_extra["route"]
    assert auto.model_extra["route"]["signals"]["adapter_match"] > 0.9
    assert auto.choices[0].message.content.startswith("ZX-")
    tuned = ask(client, "codes")
    assert tuned.choices[0].message.content.startswith("ZX-"), tuned.choices[0].message
    assert tuned.model == "codes"
    assert tuned.model_extra["route"]["path"] == "adapter_rag"
    assert tuned.model_extra["route"]["adapter"] == "codes@1"
    assert "codes" in [m.id for m in client.models.list().data]

    stream = client.chat.completions.create(
        model="codes", messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=8, stream=True,
    )
    chunks = list(stream)
    assert chunks[0].model_extra["route"]["adapter"] == "codes@1"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("ZX-")

    other = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.new_tenant("nosy"),
                          max_retries=0)
    with pytest.raises(openai.NotFoundError):
        ask(other, "codes")
    assert "codes" not in [m.id for m in other.models.list().data]


def test_hot_swap_under_load_fails_no_request(server, base_model_dir, trained):
    key = server.new_tenant("swap-tenant")
    register_cli(server, base_model_dir, key, trained["v1"], "codes")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    answers: list[tuple[float, float, str, str]] = []  # started, ended, adapter, text
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = ask(client, "codes")
                answers.append((started, time.monotonic(), r.model_extra["route"]["adapter"],
                                r.choices[0].message.content))
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(repr(exc))

    def wait_for(cond, timeout=180) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cond(), (answers, failures)

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answers) >= 3)
        registering = time.monotonic()
        body = register_cli(server, base_model_dir, key, trained["v2"], "codes")
        switched = time.monotonic()
        assert body["version"] == 2
        wait_for(lambda: sum(a[0] > switched for a in answers) >= 3)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert failures == []
    before = [a for a in answers if a[1] < registering]
    after = [a for a in answers if a[0] > switched]
    assert all(a[2] == "codes@1" and a[3].startswith("ZX-") for a in before), before
    assert all(a[2] == "codes@2" and a[3].startswith("QQ-") for a in after), after
    # the old version leaves the engine once its requests are done and the grace has passed
    deadline = time.monotonic() + 30
    while "swap-tenant--codes--v1" in engine_models(server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "swap-tenant--codes--v1" not in engine_models(server)
    assert "swap-tenant--codes--v2" in engine_models(server)

    r = httpx.post(f"{server.url}/v1/adapters/codes/rollback",
                   headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert r.status_code == 200 and r.json()["version"] == 1
    assert ask(client, "codes").choices[0].message.content.startswith("ZX-")


def test_engine_restart_gets_the_adapters_back(server, base_model_dir, trained):
    key = server.new_tenant("restart-tenant")
    register_cli(server, base_model_dir, key, trained["v1"], "codes")
    pid = server.engine_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.url}/readyz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    server.wait_ready(240)
    # reconcile runs as soon as the replica is back: no request had to ask for it
    deadline = time.monotonic() + 30
    while "restart-tenant--codes--v1" not in engine_models(server) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert "restart-tenant--codes--v1" in engine_models(server)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    assert ask(client, "codes").choices[0].message.content.startswith("ZX-")
