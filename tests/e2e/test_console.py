"""The web console in headless Chromium (the system's `chromium`, driven by Playwright; never a
downloaded browser) against the session's real `ragtune serve` and vLLM: a tenant signs in,
uploads a document and sees its job finish, asks and sees the path and the citation, registers
a small adapter and sees `adapter_rag` with it, sees the API's message for a bad upload; an
operator creates a tenant and sees its key once. Throughout: no request leaves the origin, no
script error, no serious accessibility violation (axe-core) on any page; a screenshot of every
page at 1280 and 390 px wide is saved under .artifacts/console (or $RAGTUNE_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.helpers.api import wait_evaluation
from tests.helpers.app import ADMIN_KEY, ROOT

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("RAGTUNE_TEST_ARTIFACTS", ROOT / ".artifacts")) / "console"
FACT = "The harbour office door code is QX-7731. The office opens at dawn."
# Chromium logs every HTTP error response of a fetch as a console error; those are the API's
# answers the page shows (a 422 for a bad upload, a 403 while telling a tenant key from an
# admin key), not faults of the page.
NETWORK_LOG = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")

if CHROMIUM is None:
    pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)",
                allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Watched:
    """A page with everything it does recorded: requests, console errors, script errors."""

    def __init__(self, browser, origin: str, width: int = 1280, height: int = 900) -> None:
        self.origin = origin
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(120_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"script: {e}"))
        self.page.on("console", lambda m: m.type == "error" and not NETWORK_LOG.match(m.text)
                     and self.errors.append(f"console: {m.text}"))

    def open(self, key: str) -> None:
        self.page.goto(f"{self.origin}/console")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.locator("#nav a").first.wait_for()

    def go(self, name: str) -> None:
        self.page.get_by_role("link", name=name, exact=True).click()
        self.page.get_by_role("heading", level=1, name=name).wait_for()

    def check(self, label: str) -> None:
        """No serious accessibility violation; a screenshot for people to look at."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        width = self.page.viewport_size["width"]
        self.page.screenshot(path=ARTIFACTS / f"{label}-{width}.png", full_page=True)
        results = axe_module.Axe().run(self.page)
        serious = [
            (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert serious == [], f"{label}: {serious}"

    def close(self) -> None:
        foreign = [u for u in self.requests
                   if not (u.startswith(self.origin) or u.startswith("data:"))]
        assert foreign == [], f"requests left the origin: {foreign}"
        assert self.errors == [], self.errors
        self.context.close()


def adapter_archive(tmp: Path, base_model_dir: Path) -> Path:
    from tests.helpers.random_lora import make_random_lora

    folder = make_random_lora(tmp / "lora", base_model_dir, seed=3, rank=8, scale=0.3)
    out = tmp / "orders.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f.name)
    return out


def test_a_tenant_uploads_asks_and_registers_an_adapter(server, browser, base_model_dir,
                                                        tmp_path):
    key = server.new_tenant("console-tenant")
    w = Watched(browser, server.url)
    page = w.page
    w.open(key)
    assert page.locator("#who-label").inner_text() == "Tenant console-tenant"
    assert "ragtune.key" not in page.url and key not in page.url

    # knowledge base: an upload, its job followed to the end
    w.go("Knowledge base")
    doc = tmp_path / "harbour.txt"
    doc.write_text(FACT)
    page.locator("#files").set_input_files(str(doc))
    page.locator(".jobs li").filter(has_text="succeeded").wait_for()
    row = page.locator("tbody tr").filter(has_text="harbour")
    row.filter(has_text="current").wait_for()
    w.check("knowledge")

    # a bad upload: the API's own message, in the page
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    page.locator("#files").set_input_files(str(empty))
    alert = page.get_by_role("alert").filter(has_text="empty")
    alert.wait_for()
    assert "(" in alert.inner_text()  # the error's code beside its message

    # playground: the path, its reason and the citation with its passage
    w.go("Playground")
    page.get_by_label("Question").fill("What is the harbour office door code?")
    page.locator("fieldset.choice").first.get_by_label("Path").select_option("rag")
    page.get_by_role("button", name="Ask").click()
    result = page.locator("article.result")
    result.locator(".badge.rag").wait_for()
    result.locator(".citations summary").filter(has_text="harbour").first.wait_for()
    page.locator("article.result[aria-busy]").wait_for(state="detached")  # no eval: CSP
    assert result.locator(".answer").inner_text().strip()
    assert "forced" in result.locator(".reason").inner_text() or "rag" in result.inner_text()
    result.locator(".citations summary").first.click()
    assert "QX-7731" in result.locator("blockquote").first.inner_text()
    w.check("playground")

    # adapters: register one, then ask with it
    w.go("Adapters")
    page.get_by_label("PEFT LoRA archive").set_input_files(str(adapter_archive(tmp_path,
                                                                               base_model_dir)))
    page.get_by_label("Name", exact=True).fill("orders")
    page.get_by_label("Description").fill("Writes reserve orders")
    page.get_by_role("button", name="Register").click()
    page.get_by_role("heading", name=re.compile(r"^orders v1")).wait_for()
    w.check("adapters")

    w.go("Playground")
    page.get_by_label("Question").fill("Reserve 3 lanterns for store 12.")
    first = page.locator("fieldset.choice").first
    first.get_by_label("Path").select_option("adapter_rag")
    first.get_by_label("Adapter").select_option("orders")
    page.get_by_role("button", name="Ask").click()
    result = page.locator("article.result")
    result.locator(".badge.adapter_rag").wait_for()
    assert "orders@1" in result.locator(".route").inner_text()
    page.locator("article.result[aria-busy]").wait_for(state="detached")  # no eval: CSP

    # an evaluation (made through the API) shown as its chart, verdicts and failing items
    auth = {"Authorization": f"Bearer {key}"}
    items = [{"query": q, "checks": {"contains": ["QX-7731"]}}
             for q in ("What is the harbour office door code?",
                       "Which code opens the harbour office?")]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        s = http.post("/v1/eval-sets", headers=auth, json={"name": "harbour", "items": items})
        r = http.post("/v1/evaluations", headers=auth, json={
            "eval_set": s.json()["id"], "arms": ["prompt", "rag"], "max_tokens": 24})
        ev = wait_evaluation(http, auth, r.json()["id"], timeout=300)
        assert ev["state"] == "succeeded", ev
    w.go("Evaluations")
    chart = page.get_by_role("img", name=re.compile(r"prompt: \d+% passed; rag: \d+% passed"))
    chart.wait_for()
    assert page.locator("svg.chart rect.bar").count() == 2
    page.get_by_role("region", name="Paired comparisons").wait_for()
    w.check("evaluations")
    w.go("Policy")
    w.check("policy")
    w.close()


def test_an_operator_creates_a_tenant_and_sees_its_key_once(server, browser):
    w = Watched(browser, server.url)
    page = w.page
    w.open(ADMIN_KEY)
    assert page.locator("#who-label").inner_text() == "Operator (admin key)"
    page.get_by_role("heading", level=1, name="Operators").wait_for()
    page.get_by_role("heading", name="Engine replicas").wait_for()
    page.get_by_label("Tenant id").fill("console-made")
    page.get_by_role("button", name="Create").click()
    shown = page.locator(".key-once code.key")
    shown.wait_for()
    key = shown.inner_text()
    assert re.fullmatch(r"rt-[0-9a-f]{16}-[A-Za-z0-9_-]{43}", key), key
    page.locator("tbody tr").filter(has_text="console-made").wait_for()
    w.check("operators")
    w.go("Policies")
    w.check("policies")
    # a policy the API refuses (the browser's own checks pass it): its message at its field
    page.get_by_label("adapter", exact=True).fill("x" * 70)
    page.get_by_role("button", name="Save policy").click()
    page.locator("#policy-adapter-error").filter(has_text="64").wait_for()
    assert page.get_by_label("adapter", exact=True).get_attribute("aria-invalid") == "true"
    w.go("Operators")
    page.locator("tbody tr").filter(has_text="console-made").wait_for()
    assert page.locator(".key-once").count() == 0  # shown once, then never again
    assert key not in page.content()
    # rotating asks first, then shows the new key once; the old one stops working
    page.once("dialog", lambda d: d.accept())
    page.locator("tbody tr").filter(has_text="console-made").get_by_role(
        "button", name="Rotate key").click()
    rotated = page.locator(".key-once code.key")
    rotated.wait_for()
    new_key = rotated.inner_text()
    assert new_key != key and re.fullmatch(r"rt-[0-9a-f]{16}-[A-Za-z0-9_-]{43}", new_key)
    w.close()
    assert httpx.get(f"{server.url}/v1/me",
                     headers={"Authorization": f"Bearer {key}"}).status_code == 401
    # the key it showed works
    tenant = Watched(browser, server.url)
    tenant.open(new_key)
    assert tenant.page.locator("#who-label").inner_text() == "Tenant console-made"
    tenant.close()


def test_the_console_is_usable_390_px_wide(server, browser):
    key = server.new_tenant("console-narrow")
    w = Watched(browser, server.url, width=390, height=844)
    w.open(key)
    for name, label in (("Playground", "playground"), ("Knowledge base", "knowledge"),
                        ("Adapters", "adapters")):
        w.go(name)
        overflow = w.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} is {overflow} px wider than the screen"
        w.check(label)
    w.close()


def test_a_wrong_key_is_said_plainly(server, browser):
    w = Watched(browser, server.url)
    w.page.goto(f"{server.url}/console")
    assert not w.page.get_by_role("button", name="Sign out").is_visible()  # nobody signed in
    w.check("sign-in")
    w.page.get_by_label("API key").fill("rt-0000000000000000-" + "x" * 43)
    w.page.get_by_role("button", name="Sign in").click()
    w.page.get_by_role("alert").filter(has_text="not valid").wait_for()
    w.close()
