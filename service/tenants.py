"""Tenants and their API keys. Keys are shown once and stored as SHA-256 digests.

A key is `rt-<key id>-<secret>`: the id finds the row, the digest of the whole key is compared in
constant time. Keys are 256-bit random, so a fast hash is the right tool (a slow password hash
would add milliseconds to every request and protect nothing more).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from adapters.service import AdapterService
from core.errors import Conflict, InvalidRequest, NotFound
from core.registry.db import Registry
from core.registry.models import ApiKey, Tenant, utcnow
from ingest.vector_store import ChunkStore
from service.policy import Policy

TENANT_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
KEY_FORMAT = re.compile(r"^rt-([0-9a-f]{16})-([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class TenantView:
    id: str
    policy: Policy

    def as_dict(self) -> dict:
        return {"id": self.id, "policy": self.policy.model_dump()}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    key_id = secrets.token_hex(8)
    return key_id, f"rt-{key_id}-{secrets.token_urlsafe(32)}"


def validate_tenant_id(tenant_id: str) -> str:
    if not TENANT_ID.fullmatch(tenant_id):
        raise InvalidRequest(
            "tenant id must be 1-64 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-'",
            code="invalid_tenant_id",
            param="id",
        )
    return tenant_id


# How long a verified key is taken on this replica's word: the auth query was a quarter of the
# prompt path's CPU (bench/router_overhead.py). Changes made through this replica apply here at
# once; a key revoked, or a policy changed, through another replica applies here within this.
KEY_CACHE_S = 2.0
KEY_CACHE_SIZE = 10_000


class TenantService:
    def __init__(
        self,
        registry: Registry,
        *,
        store: ChunkStore | None = None,
        data_roots: Sequence[Path] = (),
        adapters: AdapterService | None = None,
    ) -> None:
        """`store`, `data_roots` (the folders holding a folder per tenant: uploads, adapters)
        and `adapters` are what `remove` clears beside the registry's rows."""
        self.registry = registry
        self.store = store
        self.data_roots = tuple(data_roots)
        self.adapters = adapters
        # Keys verified lately: their SHA-256 -> (monotonic expiry, the tenant's view).
        self._verified: dict[str, tuple[float, TenantView]] = {}

    def create(self, tenant_id: str, policy: Policy) -> tuple[TenantView, str]:
        validate_tenant_id(tenant_id)
        key_id, key = new_key()
        exists = Conflict(f"tenant '{tenant_id}' already exists", code="tenant_exists")
        try:
            with self.registry.session(lock=True) as s:
                if s.get(Tenant, tenant_id) is not None:
                    raise exists
                s.add(Tenant(id=tenant_id, policy=policy.model_dump()))
                s.flush()
                s.add(ApiKey(id=key_id, tenant_id=tenant_id, key_hash=digest(key)))
        except IntegrityError as exc:  # created by another request since the check above
            raise exists from exc
        return TenantView(tenant_id, policy), key

    def list(self) -> list[dict]:
        """Every tenant, oldest first, with when it was made (never its keys)."""
        with self.registry.session() as s:
            rows = s.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)).all()
            return [
                {**TenantView(r.id, Policy.model_validate(r.policy)).as_dict(),
                 "created_at": r.created_at.isoformat()}
                for r in rows
            ]

    def get(self, tenant_id: str) -> TenantView:
        with self.registry.session() as s:
            row = s.get(Tenant, tenant_id)
            if row is None:
                raise NotFound(f"tenant '{tenant_id}' not found", code="tenant_not_found")
            return TenantView(row.id, Policy.model_validate(row.policy))

    def update_policy(self, tenant_id: str, changes: dict) -> TenantView:
        """Merge `changes` into the stored policy. Locked: two PATCHes at once (an operator's
        limit beside `policy calibrate --apply`'s thresholds) both land."""
        with self.registry.session(lock=True) as s:
            row = s.get(Tenant, tenant_id, with_for_update=True)
            if row is None:
                raise NotFound(f"tenant '{tenant_id}' not found", code="tenant_not_found")
            try:
                policy = Policy.model_validate({**row.policy, **changes})
            except ValidationError as exc:
                err = exc.errors()[0]
                param = "policy." + ".".join(str(p) for p in err["loc"])
                raise InvalidRequest(
                    f"{param}: {err['msg']}", code="invalid_policy", param=param
                ) from exc
            row.policy = policy.model_dump()
        self._forget(tenant_id)
        return TenantView(tenant_id, policy)

    def rotate_key(self, tenant_id: str, revoke_existing: bool = True) -> str:
        key_id, key = new_key()
        # Locked: of two rotations at once, the later one revokes the earlier one's new key.
        with self.registry.session(lock=True) as s:
            if s.get(Tenant, tenant_id, with_for_update=True) is None:
                raise NotFound(f"tenant '{tenant_id}' not found", code="tenant_not_found")
            if revoke_existing:
                s.execute(
                    update(ApiKey)
                    .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )
            s.add(ApiKey(id=key_id, tenant_id=tenant_id, key_hash=digest(key)))
        self._forget(tenant_id)
        return key

    def delete(self, tenant_id: str) -> None:
        with self.registry.session(lock=True) as s:
            row = s.get(Tenant, tenant_id)
            if row is None:
                raise NotFound(f"tenant '{tenant_id}' not found", code="tenant_not_found")
            s.delete(row)
        self._forget(tenant_id)

    async def remove(self, tenant_id: str) -> None:
        """The tenant and everything it owns: the rows first (its keys stop working at once, its
        ids are 404), then what the rows pointed to, so that a tenant created later with the same
        id inherits nothing."""
        await asyncio.to_thread(self.delete, tenant_id)
        await asyncio.to_thread(self._purge_data, tenant_id)
        if self.adapters is not None:
            await self.adapters.reconcile()  # its adapters leave the engines

    def _purge_data(self, tenant_id: str) -> None:
        if self.store is not None:
            self.store.delete_tenant(tenant_id)
        for root in self.data_roots:
            shutil.rmtree(root / tenant_id, ignore_errors=True)

    def verified(self, key: str) -> TenantView | None:
        """The tenant of a key this process verified less than KEY_CACHE_S ago, without the
        registry (None: not known here; `authenticate` decides)."""
        found = self._verified.get(digest(key))
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def _forget(self, tenant_id: str) -> None:
        """This tenant's keys are read from the registry again (a rotation, a policy change, a
        deletion made here takes effect here at once)."""
        for k, (_, view) in list(self._verified.items()):
            if view.id == tenant_id:
                self._verified.pop(k, None)

    def authenticate(self, key: str) -> TenantView | None:
        """The tenant a key acts as, or None for a malformed, unknown or revoked key. A valid
        key is remembered for KEY_CACHE_S (never an invalid one: a new key works at once)."""
        m = KEY_FORMAT.match(key)
        if not m:
            return None
        with self.registry.session() as s:
            row = s.execute(
                select(ApiKey.key_hash, ApiKey.revoked_at, Tenant.id, Tenant.policy)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(ApiKey.id == m.group(1))
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        hashed = digest(key)
        if not hmac.compare_digest(row.key_hash, hashed):
            return None
        view = TenantView(row.id, Policy.model_validate(row.policy))
        if len(self._verified) >= KEY_CACHE_SIZE:
            self._verified.clear()
        self._verified[hashed] = (time.monotonic() + KEY_CACHE_S, view)
        return view
