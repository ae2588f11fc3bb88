"""The embedded store's points as a file, and back: what a backup holds of Qdrant Edge.

Why not Edge's own snapshots, or a copy of its folder: qdrant-edge-py 0.9 reads snapshots that
a Qdrant server made (`EdgeShard.unpack_snapshot`, `update_from_snapshot`) but cannot write one;
and the folder belongs to the serving process (a locked WAL, mmapped segments that change in
place), and its files are sparse (an empty shard is ~190 MB of holes, which a copy or a tar
fills with zeros). So a backup scrolls every point (its id, its vectors, its payload) while
`EdgeChunkStore.exclusive()` holds the store's writes back, into JSON lines; a restore creates a
fresh shard with this server's settings and upserts the same points with the same ids. The file
does not depend on Edge's on-disk format, so it outlives a qdrant-edge upgrade.

One line a point: `{"id": uuid string | int, "vectors": {name: {"dense": base64 of
little-endian float32} | {"indices": [...], "values": [...]}}, "payload": {...}}`.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np
import orjson
import qdrant_edge as qe

from ingest.store_edge import EdgeChunkStore

_BATCH = 256


def dump_points(shard: qe.EdgeShard | None, out: BinaryIO) -> dict:
    """Write every point of `shard` (held by the caller: `EdgeChunkStore.exclusive()`) to
    `out`; {"points": how many, "dim": the dense vectors' size (None: no points)}."""
    count, dim, offset = 0, None, None
    if shard is None:
        return {"points": 0, "dim": None}
    while True:
        records, offset = shard.scroll(
            qe.ScrollRequest(offset=offset, limit=_BATCH, with_payload=True, with_vector=True)
        )
        for r in records:
            vectors = r.vector if isinstance(r.vector, dict) else {"": r.vector or []}
            line = {"id": str(r.id) if isinstance(r.id, uuid.UUID) else r.id, "vectors": {},
                    "payload": r.payload or {}}
            for name, v in vectors.items():
                if isinstance(v, qe.SparseVector):
                    line["vectors"][name] = {"indices": list(v.indices), "values": list(v.values)}
                else:
                    dense = np.asarray(v, dtype="<f4")
                    dim = len(dense)
                    line["vectors"][name] = {"dense": base64.b64encode(dense.tobytes()).decode()}
            out.write(orjson.dumps(line) + b"\n")
            count += 1
        if offset is None:
            return {"points": count, "dim": dim}


def load_points(store: EdgeChunkStore, lines: Iterable[bytes], dim: int | None) -> int:
    """Upsert the dumped points into `store` (a new, empty one); how many."""
    if dim is None:
        return 0  # an empty store: the server creates its collection when it starts
    store.ensure_collection(dim)
    count, batch = 0, []
    with store.exclusive() as shard:
        for raw in lines:
            if not raw.strip():
                continue
            batch.append(_point(orjson.loads(raw)))
            if len(batch) == _BATCH:
                shard.update(qe.UpdateOperation.upsert_points(batch))
                count, batch = count + len(batch), []
        if batch:
            shard.update(qe.UpdateOperation.upsert_points(batch))
            count += len(batch)
        shard.flush()
    return count


def _point(line: dict) -> qe.Point:
    vectors = {}
    for name, v in line["vectors"].items():
        if "dense" in v:
            vectors[name] = np.frombuffer(base64.b64decode(v["dense"]), dtype="<f4").tolist()
        else:
            vectors[name] = qe.SparseVector(v["indices"], v["values"])
    pid = line["id"]
    return qe.Point(uuid.UUID(pid) if isinstance(pid, str) else pid, vectors, line["payload"])
