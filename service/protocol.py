"""The HTTP protocol: the request and response bodies of API.md as pydantic models, in one module.

Every route names its success body here (`response_model=`), so /openapi.json documents what a
client gets back, not only what it sends. Response models list exactly the fields the service
answers with: the contract may grow, never lose a field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field  # noqa: F401 - used by the sections below

# ---- operations: /healthz, /readyz ----


# ---- tenants: /v1/me, /v1/tenants ----


# ---- chat: /v1/chat/completions, /v1/models ----


# ---- documents: /v1/documents ----


# ---- adapters: /v1/adapters ----


# ---- advisor and policy: /v1/advisor, /v1/policy ----
