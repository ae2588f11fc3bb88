"""The registry's adapters as readers see them: the tenant's JSON views (`GET /v1/adapters`),
and the routing read model, `ServedAdapter`, which the chat path reads at every routed query.

Only an adapter that is live with a ready current version is visible: a registration still
loading, or an adapter being deleted, is not.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.training_record import Trained, trained_from
from core.errors import NotFound
from core.registry.db import Registry
from core.registry.models import Adapter, AdapterVersion

_NO_VECTORS = np.zeros((0, 0), dtype=np.float32)
VECTOR_CACHE_SIZE = 4096


@dataclass(frozen=True)
class ServedAdapter:
    """What the chat path needs of a routable adapter version."""

    tenant_id: str
    name: str
    version: int
    engine_name: str
    path: str
    description: str = ""
    # (examples, dim) float32: the embedded description and examples (empty: none)
    vectors: np.ndarray = field(default_factory=lambda: _NO_VECTORS, compare=False, repr=False)
    # From the version's training record: None = it has none (served with the policy's
    # context); `trained.context` None = trained without retrieved context.
    trained: Trained | None = None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def of(cls, v: AdapterVersion) -> ServedAdapter:
        """Without its vectors: routing reads them through `AdapterCatalog.served_in`."""
        return cls(v.tenant_id, v.name, v.version, v.engine_name, v.path, v.description,
                   trained=trained_from(v.training))


def live_adapter(s: Session, tenant_id: str, name: str) -> Adapter:
    """The tenant's adapter `name` if a tenant may see it; else 404 adapter_not_found."""
    adapter = s.get(Adapter, (tenant_id, name))
    if adapter is None or adapter.state != "live" or adapter.current_version is None:
        raise NotFound(f"adapter '{str(name)[:80]}' not found", code="adapter_not_found",
                       param="name")
    return adapter


class AdapterCatalog:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        # A ready version's vectors and training record never change (they are written before
        # it is routable), so the routing path reads them from the registry once per (engine
        # name, creation time): a re-registered name after a delete is another version with
        # another time.
        self._vectors: OrderedDict[tuple[str, str], tuple[np.ndarray, Trained | None]] = (
            OrderedDict()
        )
        self._vectors_lock = threading.Lock()

    def get(self, tenant_id: str, name: str) -> dict:
        with self.registry.session() as s:
            adapter = live_adapter(s, tenant_id, name)
            versions = s.scalars(
                select(AdapterVersion)
                .where(AdapterVersion.tenant_id == tenant_id, AdapterVersion.name == name)
                .order_by(AdapterVersion.version.desc())
            ).all()
            return _view(adapter, versions)

    def list(self, tenant_id: str) -> dict:
        with self.registry.session() as s:
            adapters = s.scalars(
                select(Adapter)
                .where(Adapter.tenant_id == tenant_id, Adapter.state == "live",
                       Adapter.current_version.is_not(None))
                .order_by(Adapter.name)
            ).all()
            data = []
            for a in adapters:
                v = s.get(AdapterVersion, (tenant_id, a.name, a.current_version))
                data.append(_view(a, [v], with_versions=False))
        return {"object": "list", "data": data}

    def served(self, tenant_id: str, name: str | None = None) -> list[ServedAdapter]:
        """The tenant's routable adapters (their current versions), or the one named."""
        with self.registry.session() as s:
            return self.served_in(s, tenant_id, name)

    def served_in(self, s: Session, tenant_id: str, name: str | None = None) -> list[ServedAdapter]:
        """`served` inside the caller's transaction `s`. It runs at every routed query, so it
        reads columns, not ORM entities (0.31 against 0.36 ms with its transaction, here)."""
        v = AdapterVersion
        q = (
            select(v.tenant_id, v.name, v.version, v.engine_name, v.path, v.description,
                   v.created_at)
            .join(Adapter, (Adapter.tenant_id == v.tenant_id) & (Adapter.name == v.name)
                  & (Adapter.current_version == v.version))
            .where(Adapter.tenant_id == tenant_id, Adapter.state == "live", v.state == "ready")
        )
        if name is not None:
            q = q.where(Adapter.name == name)
        rows = s.execute(q.order_by(Adapter.name)).all()
        out = []
        for r in rows:
            vectors, trained = self._fixed_of(s, r)
            out.append(ServedAdapter(r.tenant_id, r.name, r.version, r.engine_name, r.path,
                                     r.description, vectors, trained))
        return out

    def version(
        self, tenant_id: str, name: str, version: int, *, candidate: bool = False
    ) -> ServedAdapter | None:
        """One version of a live adapter that may serve: the current one, an older ready one, or
        a retired one (its files stay for rollback; the engines load it on demand). For
        evaluations that pin a version; None when there is no such version. `candidate`: also
        a version still `loading` (a gate's evaluation of it, which no tenant request reaches)."""
        states = ("ready", "retired", "loading") if candidate else ("ready", "retired")
        with self.registry.session() as s:
            row = s.execute(
                select(AdapterVersion.tenant_id, AdapterVersion.name, AdapterVersion.version,
                       AdapterVersion.engine_name, AdapterVersion.path,
                       AdapterVersion.description, AdapterVersion.created_at)
                .join(Adapter, (Adapter.tenant_id == AdapterVersion.tenant_id)
                      & (Adapter.name == AdapterVersion.name))
                .where(Adapter.tenant_id == tenant_id, Adapter.name == name,
                       Adapter.state == "live", AdapterVersion.version == version,
                       AdapterVersion.state.in_(states))
            ).first()
            if row is None:
                return None
            vectors, trained = self._fixed_of(s, row)
            return ServedAdapter(row.tenant_id, row.name, row.version, row.engine_name, row.path,
                                 row.description, vectors, trained)

    def _fixed_of(self, s: Session, v) -> tuple[np.ndarray, Trained | None]:
        """What never changes of a ready version: its vectors and its training record.
        `v`: a row of the version's key columns, engine_name and created_at."""
        key = (v.engine_name, v.created_at.isoformat())
        with self._vectors_lock:
            found = self._vectors.get(key)
            if found is not None:
                self._vectors.move_to_end(key)
                return found
        row = s.execute(
            select(AdapterVersion.example_vectors, AdapterVersion.training).where(
                AdapterVersion.tenant_id == v.tenant_id, AdapterVersion.name == v.name,
                AdapterVersion.version == v.version,
            )
        ).first()
        if row is None:  # deleted since the caller's read (PostgreSQL's read committed)
            return _NO_VECTORS, None
        vectors = (np.asarray(row.example_vectors, dtype=np.float32) if row.example_vectors
                   else _NO_VECTORS)
        fixed = (vectors, trained_from(row.training))
        with self._vectors_lock:
            self._vectors[key] = fixed
            while len(self._vectors) > VECTOR_CACHE_SIZE:
                self._vectors.popitem(last=False)
        return fixed


def _view(adapter: Adapter, versions, with_versions: bool = True) -> dict:
    """An adapter's JSON body (service.protocol's AdapterSummary; AdapterDetail with versions)."""
    current = next(v for v in versions if v.version == adapter.current_version)
    out = {
        "object": "adapter",
        "name": adapter.name,
        "version": current.version,
        "status": current.state,
        "base_model": current.base_model,
        "rank": current.rank,
        "size_bytes": current.size_bytes,
        "description": current.description,
        "examples": current.examples,
        "training": current.training,
        "gate": current.gate,
        "created_at": current.created_at.isoformat(),
        "updated_at": adapter.updated_at.isoformat(),
    }
    if with_versions:
        out["versions"] = [
            {"version": v.version, "status": v.state, "rank": v.rank, "size_bytes": v.size_bytes,
             "training": v.training, "gate": v.gate, "created_at": v.created_at.isoformat(),
             "retired_at": v.retired_at.isoformat() if v.retired_at else None}
            for v in versions
        ]
    return out
