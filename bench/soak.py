"""Chaos under load, with an audit at the end.

Starts `ragtune serve` (which supervises its vLLM) on loopback in a temp data dir, on SQLite or on
a fresh PostgreSQL database, with three tenants (each with documents that carry its own marker
word) and, for one of them, a LoRA adapter. For `--minutes` it sends mixed traffic:

- chat on all three paths (prompt, rag, adapter_rag) and Responses with file_search;
- uploads of new documents and re-uploads of existing ones (new versions);
- adapter registrations (new versions), rollbacks, deletes and re-registrations;

while a schedule injects faults, one at a time, each in a recorded window:

- `engine-kill`: SIGKILL to the vLLM process (ragtune's supervisor restarts it);
- `engine-slow`: the engine stopped (SIGSTOP) for `--slow-s` seconds, then continued;
- `store-disk-full`: the vector store's folder is a small tmpfs (root only; skipped otherwise)
  that a ballast file fills for `--disk-full-s` seconds;
- `postgres-restart`: `pg_ctlcluster <version> <cluster> restart` (PostgreSQL runs only);
- `worker-kill`: SIGKILL to `ragtune serve` just after an upload is accepted, its ingestion
  worker mid-job (in the embedded layout the worker is a thread of serve, and vLLM goes with it),
  then serve started again on the same data dir.

Then it lets the system settle and audits, over the public API and then the stores (the server
stopped, its Qdrant folder opened):

- every accepted upload indexed exactly once: its job succeeded, the document's current version is
  its last accepted upload, no version is left queued or indexing, and the index holds exactly
  the current version's chunk count of each document (no leftover points of older versions);
- nothing half-indexed visible at any time: no answer cited a version that ended `failed`;
- every registered adapter ready on the engine, or cleanly absent (the engine holds exactly the
  current versions);
- no answer carrying another tenant's document (citations and text checked for other tenants'
  marker words);
- no 5xx other than the declared 503s (engine, registry or retrieval unavailable) and 507s inside a
  fault window (plus `--grace-s` after it);
- memory flat: the API process's RSS at the end against after warm-up.

It prints the counts (requests by kind and status, faults, errors by code, audit findings) and
exits 1 when the audit found something.

Two API processes and two workers need one vector store they all reach: a Qdrant server
(`RAGTUNE_QDRANT__URL`). This script runs the embedded layout (one `ragtune serve`, its worker a
thread, Qdrant Edge on local disk); the multi-process layout is refused with that reason.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import RagtuneServer, say, tenant_key  # noqa: E402

# The outages API.md declares: the engine, the registry or the knowledge base unavailable (503),
# no space for an upload (507), and the engine failing under a request it had taken (502).
DECLARED = {"engine_unavailable", "registry_unavailable", "retrieval_unavailable",
            "insufficient_storage", "upstream_error"}
TENANTS = ("soak-a", "soak-b", "soak-c")
QUESTIONS = ["What does the register say about drawer {i}?",
             "Which drawer holds the entry number {i}?", "Say hello."]


def marker(tenant: str) -> str:
    return "zq" + tenant.replace("-", "") + "mark"


def document(tenant: str, doc: str, version: int) -> bytes:
    facts = " ".join(
        f"Entry {i} of {doc} for {marker(tenant)} is kept in drawer {(i + version) % 7}."
        for i in range(40)
    )
    return f"{doc} register, version {version}. {facts}".encode()


@dataclass
class Record:
    kinds: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    undeclared: list = field(default_factory=list)  # (time, kind, status, code)
    leaks: list = field(default_factory=list)
    cited: set = field(default_factory=set)  # (tenant, document, version)
    uploads: dict = field(default_factory=dict)  # (tenant, doc) -> [(version, job_id)]
    adapters: dict = field(default_factory=dict)  # tenant -> set of names it should have
    windows: list = field(default_factory=list)  # [name, start, end]; end inf while it runs
    rss: list = field(default_factory=list)  # (time, kB)

    def in_window(self, at: float, grace: float) -> bool:
        return any(start <= at <= end + grace for _, start, end in self.windows)


class Soak:
    def __init__(self, args, server: RagtuneServer, keys: dict[str, str], adapter_dir: Path):
        self.args = args
        self.server = server
        self.keys = keys
        self.adapter_dir = adapter_dir
        self.rec = Record()
        self.stop = asyncio.Event()
        self.restarting = asyncio.Event()
        self.rng = random.Random(args.seed)
        self.docs = {t: [f"reg{i}" for i in range(3)] for t in TENANTS}

    # ---- traffic ------------------------------------------------------------------------
    async def request(self, session, kind: str, method: str, path: str, tenant: str, **kw):
        at = time.monotonic()
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        try:
            async with session.request(method, self.server.url + path, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=120), **kw) as r:
                body = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            status, body = 0, b""  # refused or cut off: the server was down (a fault)
        self.rec.kinds[(kind, status)] += 1
        data = {}
        with contextlib.suppress(ValueError):
            data = json.loads(body or b"{}")
        code = (data.get("error") or {}).get("code") if isinstance(data, dict) else None
        if status >= 400 or status == 0:
            self.rec.errors[code or f"http_{status}"] += 1
        if status == 0 or status >= 500:
            # Inside a fault window a declared outage, or no answer while serve restarts, is
            # what the fault means; anything else, and any of it outside one, is a finding.
            expected = status == 0 or code in DECLARED
            # (a request in flight when the fault began fails inside it: its end counts too)
            inside = (self.rec.in_window(at, self.args.grace_s)
                      or self.rec.in_window(time.monotonic(), self.args.grace_s))
            if not (expected and inside):
                self.rec.undeclared.append((round(at - self.t0, 1), kind, status, code))
        return status, data

    def check_answer(self, tenant: str, data: dict) -> None:
        others = [marker(t) for t in TENANTS if t != tenant]
        for c in data.get("citations") or []:
            self.rec.cited.add((tenant, c["document_id"], c.get("version")))
            if any(m in c.get("text", "") for m in others):
                self.rec.leaks.append((tenant, c["document_id"]))
        text = json.dumps(data.get("choices") or data.get("output") or "")
        if any(m in text for m in others):
            self.rec.leaks.append((tenant, "answer text"))

    async def chat(self, session, tenant: str) -> None:
        path = self.rng.choice(["prompt", "rag", "adapter_rag", "responses"])
        q = self.rng.choice(QUESTIONS).format(i=self.rng.randrange(40))
        if path == "responses":
            status, data = await self.request(
                session, "responses", "POST", "/v1/responses", tenant,
                json={"input": q, "max_output_tokens": self.args.max_tokens, "temperature": 0})
        else:
            body = {"messages": [{"role": "user", "content": q}], "temperature": 0,
                    "max_tokens": self.args.max_tokens}
            if path == "adapter_rag" and self.rec.adapters.get(tenant):
                body["model"] = self.rng.choice(sorted(self.rec.adapters[tenant]))
            elif path != "adapter_rag":
                body["route"] = path
            else:
                body["route"] = "rag"
            status, data = await self.request(session, f"chat:{path}", "POST",
                                              "/v1/chat/completions", tenant, json=body)
        if status == 200:
            self.check_answer(tenant, data)

    async def upload(self, session, tenant: str) -> None:
        if self.rng.random() < 0.3:
            doc = f"new{uuid.uuid4().hex[:6]}"
            self.docs[tenant].append(doc)
        else:
            doc = self.rng.choice(self.docs[tenant])
        versions = self.rec.uploads.setdefault((tenant, doc), [])
        content = document(tenant, doc, len(versions) + 1)
        form = aiohttp.FormData()
        form.add_field("file", content, filename=f"{doc}.txt")
        status, data = await self.request(session, "upload", "POST", "/v1/documents", tenant,
                                          data=form)
        if status == 202:
            versions.append((data["documents"][0]["version"], data["job_id"]))
            if self.pending_kill is not None and not self.pending_kill.done():
                self.pending_kill.set_result(data["job_id"])

    async def adapter_op(self, session, tenant: str) -> None:
        names = self.rec.adapters.setdefault(tenant, set())
        op = self.rng.choice(["register", "register", "rollback", "delete"]) if names \
            else "register"
        if op == "register":
            name = self.rng.choice(["orders", "picks"])
            form = aiohttp.FormData()
            folder = self.adapter_dir / f"a{self.rng.randrange(self.args.adapter_pool)}"
            form.add_field("file", _packed(folder), filename="a.tar.gz")
            form.add_field("name", name)
            form.add_field("examples", json.dumps(["Write an ORDERS rule", "a PICKS rule"]))
            status, _ = await self.request(session, "adapter:register", "POST", "/v1/adapters",
                                           tenant, data=form)
            if status == 201:
                names.add(name)
        elif op == "rollback":
            name = self.rng.choice(sorted(names))
            await self.request(session, "adapter:rollback", "POST",
                               f"/v1/adapters/{name}/rollback", tenant)
        else:
            name = self.rng.choice(sorted(names))
            status, _ = await self.request(session, "adapter:delete", "DELETE",
                                           f"/v1/adapters/{name}", tenant)
            if status == 204:
                names.discard(name)

    async def client(self, session, n: int) -> None:
        while not self.stop.is_set():
            if self.restarting.is_set():
                await asyncio.sleep(0.5)
                continue
            tenant = TENANTS[n % len(TENANTS)] if self.rng.random() < 0.8 else \
                self.rng.choice(TENANTS)
            roll = self.rng.random()
            if roll < 0.8:
                await self.chat(session, tenant)
            elif roll < 0.92:  # about what the one embedded worker indexes on 2 busy cores
                await self.upload(session, tenant)
            elif tenant == TENANTS[0]:
                await self.adapter_op(session, tenant)

    # ---- faults -------------------------------------------------------------------------
    async def faults(self) -> None:
        plan = [f for f in self.args.faults.split(",") if f]
        if not self.args.postgres and "postgres-restart" in plan:
            plan.remove("postgres-restart")
        # The last fault starts two minutes before the end, so it ends (an engine restart takes
        # a minute or two here) while traffic still runs.
        last = self.t0 + max(60.0, self.args.minutes * 60 - 120)
        for i, name in enumerate(plan):
            # Spread what is left over the time left: a fault that ran long does not push the
            # later ones past the end.
            await asyncio.sleep(max(5.0, (last - time.monotonic()) / max(1, len(plan) - i)))
            if self.stop.is_set():
                return
            start = time.monotonic()
            say(f"[{start - self.t0:6.0f}s] fault {name} ...")
            window = [name, start, float("inf")]  # open while the fault runs
            self.rec.windows.append(window)
            done = await getattr(self, "fault_" + name.replace("-", "_"))()
            if done is False:
                self.rec.windows.remove(window)
                say(f"[{start - self.t0:6.0f}s] fault {name}: skipped")
                continue
            window[2] = time.monotonic()
            say(f"[{start - self.t0:6.0f}s] fault {name}: {window[2] - start:.0f}s")

    async def _engine_back(self) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with aiohttp.ClientSession() as s, s.get(
                        f"{self.server.url}/readyz", timeout=aiohttp.ClientTimeout(total=3)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(1)

    async def fault_engine_kill(self):
        pid = self.server.engine_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        await asyncio.sleep(2)
        await self._engine_back()

    async def fault_engine_slow(self):
        pid = self.server.engine_pid()
        if pid is None:
            return False
        os.killpg(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.args.slow_s)
        finally:
            os.killpg(pid, signal.SIGCONT)
        await self._engine_back()

    async def fault_store_disk_full(self):
        if self.qdrant_tmpfs is None:
            return False
        ballast = self.qdrant_tmpfs / "ballast"
        await asyncio.to_thread(_fill, ballast)
        try:
            await asyncio.sleep(self.args.disk_full_s)
        finally:
            ballast.unlink(missing_ok=True)

    async def fault_postgres_restart(self):
        if not self.args.postgres:
            return False
        await asyncio.to_thread(subprocess.run, ["pg_ctlcluster", *self.args.pg_cluster.split(),
                                                 "restart"], check=True)

    async def fault_worker_kill(self):
        self.pending_kill = asyncio.get_running_loop().create_future()
        try:
            job = await asyncio.wait_for(self.pending_kill, 60)
        except TimeoutError:
            return False
        await asyncio.sleep(0.3)  # the worker claims it and starts embedding
        self.restarting.set()
        os.killpg(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait()
        await asyncio.sleep(1)
        say(f"  killed ragtune serve with job {job[:8]} accepted; starting it again")
        self.server.start()
        await asyncio.to_thread(self.server.wait_ready, 900)
        self.restarting.clear()

    # ---- memory -------------------------------------------------------------------------
    async def memory(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                status = Path(f"/proc/{self.server.proc.pid}/status").read_text()
                kb = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
                self.rec.rss.append((time.monotonic() - self.t0, kb))
            await asyncio.sleep(10)

    async def run(self) -> None:
        self.pending_kill = None
        self.t0 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(self.client(session, i))
                       for i in range(self.args.concurrency)]
            side = [asyncio.create_task(self.faults()), asyncio.create_task(self.memory())]
            await asyncio.sleep(self.args.minutes * 60)
            self.stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)


def _packed(folder: Path) -> bytes:
    from adapters.pack import pack_adapter

    return pack_adapter(folder)


def _fill(path: Path) -> None:
    with open(path, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 20))


# ---- the audit ----------------------------------------------------------------------------
def drain(soak: Soak, timeout_s: float) -> float | None:
    """Seconds until every accepted upload's job ended (the worker works off its backlog
    before the audit judges); None after `timeout_s`."""
    import httpx

    started = time.monotonic()
    pending = {(t, job) for (t, _), versions in soak.rec.uploads.items() for _, job in versions}
    while pending and time.monotonic() - started < timeout_s:
        for tenant, job in list(pending):
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{soak.server.url}/v1/jobs/{job}", timeout=10,
                              headers={"Authorization": f"Bearer {soak.keys[tenant]}"})
                if r.status_code != 200 or r.json()["state"] in ("succeeded", "failed"):
                    pending.discard((tenant, job))
        time.sleep(2)
    return None if pending else time.monotonic() - started


def audit_api(soak: Soak) -> tuple[list[str], dict]:
    import httpx

    findings: list[str] = []
    current: dict = {}
    url = soak.server.url
    for (tenant, doc), accepted in soak.rec.uploads.items():
        headers = {"Authorization": f"Bearer {soak.keys[tenant]}"}
        if not accepted:
            continue
        for version, job_id in accepted:
            job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
            if job.get("state") != "succeeded":
                findings.append(f"{tenant}/{doc}@{version}: job {job_id[:8]} "
                                f"{job.get('state')}: {job.get('error')}")
        d = httpx.get(f"{url}/v1/documents/{doc}", headers=headers).json()
        last = max(v for v, _ in accepted)
        if d.get("current_version") != last:
            findings.append(f"{tenant}/{doc}: current version {d.get('current_version')}, "
                            f"last accepted upload {last}")
        for v in d.get("versions", []):
            if v["state"] in ("queued", "indexing"):
                findings.append(f"{tenant}/{doc}@{v['version']} still {v['state']}")
            if v["state"] == "failed" and (tenant, doc, v["version"]) in soak.rec.cited:
                findings.append(f"{tenant}/{doc}@{v['version']} was cited and ended failed")
        current[(tenant, doc)] = (d.get("current_version"), d.get("chunks"))
    try:
        engine = httpx.get(f"{soak.server.engine_url}/v1/models", timeout=10).json()
    except httpx.HTTPError as exc:
        return [*findings, f"the engine does not answer: {exc}"], current
    loaded = {m["id"] for m in engine.get("data", []) if m.get("parent")}
    expected = set()
    for tenant in TENANTS:
        headers = {"Authorization": f"Bearer {soak.keys[tenant]}"}
        for a in httpx.get(f"{url}/v1/adapters", headers=headers).json().get("data", []):
            if a["status"] != "ready":
                findings.append(f"adapter {tenant}/{a['name']} is {a['status']}")
            expected.add(f"{tenant}--{a['name']}--v{a['version']}")
    if loaded != expected:
        findings.append(f"engine adapters {sorted(loaded)} != registry's {sorted(expected)}")
    return findings, current


def audit_store(data_dir: Path, current: dict) -> list[str]:
    from core.settings import QdrantSettings
    from ingest.store_edge import EdgeChunkStore

    findings = []
    store = EdgeChunkStore(data_dir / "qdrant", QdrantSettings())
    try:
        for (tenant, doc), (version, chunks) in current.items():
            total, of_current = store.count(tenant, doc), store.count(tenant, doc, version)
            if of_current != chunks or total != chunks:
                findings.append(f"{tenant}/{doc}: index holds {total} points, {of_current} of "
                                f"current version {version}; expected {chunks}")
    finally:
        store.close()
    return findings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--faults", default="engine-kill,engine-slow,store-disk-full,"
                    "postgres-restart,worker-kill")
    ap.add_argument("--slow-s", type=float, default=15)
    ap.add_argument("--disk-full-s", type=float, default=20)
    ap.add_argument("--drain-s", type=float, default=900,
                    help="at most this long for the ingestion backlog before the audit")
    ap.add_argument("--grace-s", type=float, default=15,
                    help="a declared 5xx this long after a fault window still counts as its")
    ap.add_argument("--postgres", action="store_true",
                    help="the registry on a fresh database of 127.0.0.1:5432 (else SQLite)")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--pg-cluster", default="15 main", help="pg_ctlcluster's version and name")
    ap.add_argument("--api-processes", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="stand-alone `ragtune worker`s")
    ap.add_argument("--adapter-pool", type=int, default=3)
    ap.add_argument("--model-dir", type=Path, default=Path(".data/models/base"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.api_processes > 1 or args.workers:
        say("several API processes and workers share one vector store: that takes a Qdrant "
            "server (RAGTUNE_QDRANT__URL), which this script does not start; the embedded layout "
            "(one serve, its worker a thread, Qdrant Edge) is what it runs")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-soak-"))
    data = tmp / "data"
    # The store's free-space floor fits the small tmpfs (its default, 256 MB, is for disks).
    env = {"RAGTUNE_ADAPTERS__RECONCILE_INTERVAL_S": "5", "HF_HUB_OFFLINE": "1",
           "RAGTUNE_QDRANT__MIN_FREE_MB": "16"}
    db_name = None
    if args.postgres:
        db_name = "soak_" + uuid.uuid4().hex[:8]
        _pg(args.pg_url, f'CREATE DATABASE "{db_name}"')
        env["RAGTUNE_DATABASE_URL"] = args.pg_url.rsplit("/", 1)[0] + f"/{db_name}"
    qdrant_tmpfs = data / "qdrant"
    qdrant_tmpfs.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs",
                              str(qdrant_tmpfs)], capture_output=True).returncode == 0
    server = RagtuneServer(data, admin_key="soak-" + uuid.uuid4().hex, env=env,
                           model_dir=args.model_dir.resolve(), new_session=True)
    findings: list[str] = []
    try:
        server.start()
        say(f"ragtune ready after {server.wait_ready(900, say):.0f}s "
            f"({'PostgreSQL' if args.postgres else 'SQLite'}; store on "
            f"{'a 96 MB tmpfs' if mounted else 'the disk (no tmpfs: not root)'})")
        keys = {t: tenant_key(server.url, server.admin_key, t, {"top_k": 2}) for t in TENANTS}
        adapter_dir = tmp / "adapters"
        from tests.helpers.random_lora import make_random_lora
        for i in range(args.adapter_pool):
            make_random_lora(adapter_dir / f"a{i}", args.model_dir, seed=i, rank=8, scale=0.5)
        soak = Soak(args, server, keys, adapter_dir)
        soak.qdrant_tmpfs = qdrant_tmpfs if mounted else None
        asyncio.run(_seed(soak))
        say(f"soaking {args.minutes:.0f} min at concurrency {args.concurrency}; faults: "
            f"{args.faults}")
        asyncio.run(soak.run())
        say(f"settling {args.grace_s * 2:.0f}s (and until /readyz is 200), then the audit")
        time.sleep(args.grace_s * 2)
        try:
            server.wait_ready(900)
        except Exception as exc:  # noqa: BLE001 - reported as what it is
            findings.append(f"not ready after the soak: {str(exc)[:300]}")
        drained = drain(soak, args.drain_s)
        say(f"ingestion queue drained in {drained:.0f}s" if drained is not None else
            f"ingestion queue not drained after {args.drain_s:.0f}s")
        api_findings, current = audit_api(soak)
        findings += api_findings
        say(server.stop())
        findings += audit_store(data, current)
        findings += [f"leak: {t} saw {what}" for t, what in soak.rec.leaks]
        findings += [f"undeclared 5xx at {at}s: {kind} {status} {code}"
                     for at, kind, status, code in soak.rec.undeclared]
        _report(soak, findings)
    finally:
        server.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(qdrant_tmpfs)], check=False)
        if db_name:
            _pg(args.pg_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    return 1 if findings else 0


async def _seed(soak: Soak) -> None:
    """Every tenant's first documents, indexed, and the adapter tenant's first adapter."""
    async with aiohttp.ClientSession() as session:
        soak.t0 = time.monotonic()
        soak.pending_kill = None
        for tenant in TENANTS:
            for doc in soak.docs[tenant]:
                versions = soak.rec.uploads.setdefault((tenant, doc), [])
                form = aiohttp.FormData()
                form.add_field("file", document(tenant, doc, 1), filename=f"{doc}.txt")
                status, data = await soak.request(session, "seed", "POST", "/v1/documents",
                                                  tenant, data=form)
                assert status == 202, data
                versions.append((1, data["job_id"]))
        await soak.adapter_op(session, TENANTS[0])


def _report(soak: Soak, findings: list[str]) -> None:
    rec = soak.rec
    say("\nrequests (kind, status: count):")
    for (kind, status), n in sorted(rec.kinds.items()):
        say(f"  {kind:18} {status:4}: {n}")
    say(f"total {sum(rec.kinds.values())} requests; errors by code: {dict(rec.errors)}")
    say("faults: " + ", ".join(
        f"{n} ({e - s:.0f}s)" if e != float("inf") else f"{n} (still recovering at the end)"
        for n, s, e in rec.windows))
    uploads = sum(len(v) for v in rec.uploads.values())
    say(f"accepted uploads {uploads} over {len(rec.uploads)} documents; "
        f"versions cited {len(rec.cited)}")
    if rec.rss:
        warm = [kb for at, kb in rec.rss if at > 60] or [kb for _, kb in rec.rss]
        say(f"API RSS after warm-up {warm[0] / 1024:.0f} MB, at the end {warm[-1] / 1024:.0f} MB "
            f"({(warm[-1] - warm[0]) / max(warm[0], 1) * 100:+.1f}%)")
    say(f"audit findings: {len(findings)}")
    for f in findings:
        say(f"  - {f}")


def _pg(url: str, sql: str) -> None:
    from sqlalchemy import create_engine, text

    from core.registry.db import normalize_url

    engine = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
