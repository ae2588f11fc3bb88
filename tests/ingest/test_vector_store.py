"""The same contract tests over every ChunkStore: Qdrant Edge (embedded, in a tmp folder), the
server implementation on qdrant-client's local mode, and the server implementation on a real
`qdrant/qdrant` container (testcontainers; skipped where no Docker engine answers).

Random normalised vectors stand in for embeddings: no model is needed here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from core.settings import QdrantSettings
from ingest.store_edge import EdgeChunkStore
from ingest.store_qdrant import ServerChunkStore
from ingest.stores import open_chunk_store
from ingest.vector_store import (
    Chunk,
    ChunkStore,
    VectorStoreError,
    chunk_id,
)

DIM = 384
KINDS = ["edge", "local", "container"]
QDRANT_IMAGE = "qdrant/qdrant:v1.16.2"  # ACORN arrived in 1.16

# qdrant-client's local mode warns that payload indexes and search params have no effect there.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),
]


def unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_chunks(
    tenant: str, document: str, version: int, vectors: np.ndarray, *, text: str = "chunk"
) -> list[Chunk]:
    return [
        Chunk(
            id=chunk_id(tenant, document, version, i),
            tenant_id=tenant,
            document_id=document,
            version=version,
            chunk_index=i,
            text=f"{text} {i} of {document}@{version}",
            source=f"{document}.md",
            vector=v.tolist(),
            metadata={"lang": "en", "i": i},
        )
        for i, v in enumerate(vectors)
    ]


# -- the three backends ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def qdrant_server() -> Iterator[str]:
    """URL of a throwaway Qdrant server in Docker, or a skip saying why there is none."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no client library, no socket, daemon down: all mean "no Docker"
        pytest.skip(f"no Docker engine reachable for a qdrant/qdrant container: {exc}")
    from testcontainers.community.qdrant import QdrantContainer

    with QdrantContainer(QDRANT_IMAGE) as qdrant:
        yield f"http://{qdrant.get_container_host_ip()}:{qdrant.get_exposed_port(6333)}"


Opener = Callable[[], ChunkStore]


@pytest.fixture(params=KINDS)
def opener(request, tmp_path: Path) -> Iterator[Opener]:
    """A function that opens (or re-opens) the same store; every store opened is closed after."""
    kind = request.param
    if kind == "edge":
        settings = QdrantSettings(path=tmp_path / "edge", optimize_after_points=100_000)
    elif kind == "local":
        settings = None
    else:
        url = request.getfixturevalue("qdrant_server")
        settings = QdrantSettings(url=url, collection=f"t_{uuid.uuid4().hex[:12]}")
    opened: list[ChunkStore] = []

    def open_store() -> ChunkStore:
        if kind == "local":
            from qdrant_client import QdrantClient

            store = ServerChunkStore(QdrantClient(path=str(tmp_path / "local")), QdrantSettings())
        else:
            store = open_chunk_store(settings, tmp_path)
        opened.append(store)
        store.ensure_collection(DIM)
        return store

    open_store.kind = kind
    yield open_store
    for store in opened:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                store.close()
            except Exception:
                pass


@pytest.fixture
def store(opener: Opener) -> ChunkStore:
    return opener()


# -- the contract ----------------------------------------------------------------------------


def test_factory_picks_edge_without_url(tmp_path: Path) -> None:
    store = open_chunk_store(QdrantSettings(), tmp_path)
    try:
        assert isinstance(store, EdgeChunkStore)
        assert store.path == tmp_path / "qdrant"
    finally:
        store.close()


def test_search_returns_best_first_with_the_chunk_fields(store: ChunkStore) -> None:
    rng = np.random.default_rng(1)
    chunks = make_chunks("acme", "guide", 1, unit(rng, 20))
    store.upsert(chunks)
    target = chunks[7]

    hits = store.search("acme", target.vector, 5)

    assert len(hits) == 5
    assert hits[0].chunk_id == target.id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    top = hits[0]
    assert (top.document_id, top.version, top.chunk_index) == ("guide", 1, 7)
    assert (top.source, top.text) == ("guide.md", target.text)
    assert top.metadata == {"lang": "en", "i": 7}
    assert top.tokens is None  # indexed without a stored count: serving counts it
    # Same order as exact cosine over the tenant's vectors.
    vectors = np.array([c.vector for c in chunks])
    expected = np.argsort(-(vectors @ np.asarray(target.vector)))[:5]
    assert [h.chunk_index for h in hits] == expected.tolist()


def test_a_chunks_token_count_is_stored_with_it(store: ChunkStore) -> None:
    rng = np.random.default_rng(4)
    chunks = [dataclasses.replace(c, tokens=10 + c.chunk_index)
              for c in make_chunks("acme", "guide", 1, unit(rng, 3))]
    store.upsert(chunks)
    hits = store.search("acme", chunks[2].vector, 3)
    assert {h.chunk_index: h.tokens for h in hits} == {0: 10, 1: 11, 2: 12}


def test_a_tenant_never_sees_another_tenants_chunks(store: ChunkStore) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 10)
    # Same document ids, same versions, same vectors: only the tenant differs.
    store.upsert(make_chunks("tenant-a", "shared", 1, vectors, text="A"))
    store.upsert(make_chunks("tenant-b", "shared", 1, vectors[:3], text="B"))

    hits = store.search("tenant-b", vectors[5].tolist(), 10)
    assert len(hits) == 3 and all(h.text.startswith("B ") for h in hits)
    assert {h.chunk_id for h in hits} == {chunk_id("tenant-b", "shared", 1, i) for i in range(3)}
    assert store.search("tenant-c", vectors[5].tolist(), 10) == []
    # Excluding nothing of its own does not widen a tenant's view.
    assert len(store.search("tenant-b", vectors[5].tolist(), 10, exclude={("x", 1)})) == 3
    assert store.count("tenant-a") == 10 and store.count("tenant-b") == 3

    store.delete_document("tenant-b", "shared")
    assert store.count("tenant-b") == 0
    assert store.count("tenant-a", "shared") == 10

    with pytest.raises(ValueError):
        store.search("", vectors[0].tolist(), 5)


def test_exclude_hides_exactly_the_given_versions(store: ChunkStore) -> None:
    rng = np.random.default_rng(3)
    store.upsert(make_chunks("acme", "policy", 1, unit(rng, 4), text="old"))
    store.upsert(make_chunks("acme", "policy", 2, unit(rng, 4), text="new"))
    store.upsert(make_chunks("acme", "faq", 1, unit(rng, 4), text="faq"))
    q = unit(rng)[0].tolist()

    def versions(**kw) -> set[tuple[str, int]]:
        return {(h.document_id, h.version) for h in store.search("acme", q, 20, **kw)}

    assert versions() == {("policy", 1), ("policy", 2), ("faq", 1)}
    assert versions(exclude={("policy", 1)}) == {("policy", 2), ("faq", 1)}
    assert versions(exclude=[("policy", 1), ("policy", 2)]) == {("faq", 1)}
    assert versions(exclude={("policy", 3), ("other", 1)}) == {
        ("policy", 1),
        ("policy", 2),
        ("faq", 1),
    }


def test_documents_keeps_only_those_documents_chunks(store: ChunkStore) -> None:
    """A vector store's search: only chunks of the given documents, of this tenant, under the
    same exclude, dense and hybrid alike; an empty set finds nothing."""
    rng = np.random.default_rng(4)
    store.upsert(make_chunks("acme", "policy", 1, unit(rng, 4), text="policy terms"))
    store.upsert(make_chunks("acme", "policy", 2, unit(rng, 4), text="policy terms"))
    store.upsert(make_chunks("acme", "faq", 1, unit(rng, 4), text="faq terms"))
    store.upsert(make_chunks("other", "policy", 1, unit(rng, 4), text="policy terms"))
    q = unit(rng)[0].tolist()

    def found(**kw) -> set[tuple[str, int]]:
        hits = store.search("acme", q, 20, **kw)
        return {(h.document_id, h.version) for h in hits}

    for text in (None, "policy terms faq"):
        assert found(text=text, documents={"faq"}) == {("faq", 1)}
        assert found(text=text, documents=["policy", "faq", "missing"]) == {
            ("policy", 1), ("policy", 2), ("faq", 1)}
        assert found(text=text, documents={"policy"}, exclude={("policy", 1)}) == {("policy", 2)}
        assert found(text=text, documents=set()) == set()
        assert found(text=text, documents={"missing"}) == set()
    assert store.search("acme", q, 20, documents=set()).top_score is None


def test_delete_version_and_delete_document(store: ChunkStore) -> None:
    rng = np.random.default_rng(4)
    store.upsert(make_chunks("acme", "policy", 1, unit(rng, 5)))
    store.upsert(make_chunks("acme", "policy", 2, unit(rng, 3)))
    store.upsert(make_chunks("acme", "faq", 1, unit(rng, 2)))
    store.upsert(make_chunks("other", "policy", 1, unit(rng, 2)))
    assert store.count("acme", "policy", 1) == 5 and store.count("acme", "policy") == 8

    store.delete_version("acme", "policy", 1)
    assert store.count("acme", "policy", 1) == 0
    assert store.count("acme", "policy", 2) == 3
    assert store.count("other", "policy", 1) == 2  # same document id, other tenant: untouched
    hits = store.search("acme", unit(rng)[0].tolist(), 20)
    assert {(h.document_id, h.version) for h in hits} == {("policy", 2), ("faq", 1)}

    store.delete_document("acme", "policy")
    assert store.count("acme") == 2 and store.count("other") == 2
    store.delete_document("acme", "never-uploaded")  # deleting nothing is fine
    store.delete_version("nobody", "policy", 1)

    store.delete_tenant("acme")  # the tenant was deleted: all its chunks, no one else's
    assert store.count("acme") == 0 and store.count("other") == 2
    assert store.search("acme", unit(rng)[0].tolist(), 20) == []
    store.delete_tenant("nobody")


def test_reupserting_the_same_chunks_overwrites(store: ChunkStore) -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 6)
    store.upsert(make_chunks("acme", "guide", 3, vectors, text="first"))
    store.upsert(make_chunks("acme", "guide", 3, vectors, text="second"))  # a re-run job

    assert store.count("acme") == 6 and store.count("acme", "guide", 3) == 6
    hits = store.search("acme", vectors[0].tolist(), 6)
    assert len(hits) == 6 and all(h.text.startswith("second ") for h in hits)


def test_min_score_drops_weaker_hits(store: ChunkStore) -> None:
    rng = np.random.default_rng(6)
    base = unit(rng)[0]
    # Cosine to `base` of about 0.95, 0.7, 0.4, 0.1.
    noise = unit(rng, 4)
    vectors = []
    for target, n in zip([0.95, 0.7, 0.4, 0.1], noise, strict=True):
        orth = n - (n @ base) * base
        orth /= np.linalg.norm(orth)
        vectors.append(target * base + np.sqrt(1 - target**2) * orth)
    store.upsert(make_chunks("acme", "doc", 1, np.array(vectors)))

    hits = store.search("acme", base.tolist(), 10, min_score=0.5)
    assert [h.chunk_index for h in hits] == [0, 1]
    assert all(h.score >= 0.5 for h in hits)
    assert store.search("acme", base.tolist(), 10, min_score=0.99) == []
    assert len(store.search("acme", base.tolist(), 10)) == 4


def test_restart_finds_the_data(opener: Opener) -> None:
    rng = np.random.default_rng(7)
    vectors = unit(rng, 30)
    store = opener()
    store.upsert(make_chunks("acme", "guide", 1, vectors))
    store.delete_version("acme", "guide", 0)
    store.ping()
    store.close()
    with pytest.raises(VectorStoreError):
        store.ping()  # a closed store is not ready

    again = opener()
    again.ping()
    assert again.count("acme") == 30
    assert again.search("acme", vectors[4].tolist(), 1)[0].chunk_index == 4
    again.upsert(make_chunks("acme", "guide", 2, vectors[:2]))
    assert again.count("acme") == 32


def test_wrong_dimension_is_refused(store: ChunkStore) -> None:
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError):
        store.upsert(make_chunks("acme", "doc", 1, rng.standard_normal((1, 8))))
    with pytest.raises(ValueError):
        store.search("acme", [0.1] * 8, 5)
    with pytest.raises(VectorStoreError):
        store.ensure_collection(DIM * 2)


# -- Edge specifics --------------------------------------------------------------------------


def test_edge_folder_is_owned_by_one_store(tmp_path: Path) -> None:
    settings = QdrantSettings(path=tmp_path / "q")
    first = open_chunk_store(settings, tmp_path)
    first.ensure_collection(DIM)
    first.upsert(make_chunks("t1", "d", 1, unit(np.random.default_rng(1), 3)))
    try:
        with pytest.raises(Exception, match="WAL"):
            open_chunk_store(settings, tmp_path)
        # Refused before it loads anything: a load would break the first store's next flush.
        first.upsert(make_chunks("t1", "d", 2, unit(np.random.default_rng(2), 3)))
        assert first.count("t1") == 6
    finally:
        first.close()
    open_chunk_store(settings, tmp_path).close()  # free again once closed


def test_edge_filtered_recall_vs_exact_search(tmp_path: Path) -> None:
    """Filtered top-5 against numpy brute force over the tenant's vectors, through the HNSW path.

    Small thresholds make this small collection take the path a big one takes: segments get
    HNSW indexes and every tenant is above the full-scan threshold, so queries walk the
    per-tenant graph rather than scanning the tenant exactly. The search parameters are the
    defaults (hnsw_ef, ACORN off): the recall goal holds for what production runs.
    """
    rng = np.random.default_rng(9)
    n, tenants = 4000, 20
    settings = QdrantSettings(
        path=tmp_path / "q",
        full_scan_threshold_kb=50,  # ~33 vectors: every tenant (~200) gets its own graph
        indexing_threshold_kb=100,
        optimize_after_points=n,  # the last batch triggers the optimizer
    )
    store = open_chunk_store(settings, tmp_path)
    try:
        store.ensure_collection(DIM)
        vectors = unit(rng, n)
        owner = rng.integers(0, tenants, n)
        chunks = [
            Chunk(
                id=chunk_id(f"t{owner[i]}", "d", 1, i),
                tenant_id=f"t{owner[i]}",
                document_id="d",
                version=1,
                chunk_index=i,
                text="",
                source="d.txt",
                vector=vectors[i].tolist(),
                metadata={},
            )
            for i in range(n)
        ]
        for start in range(0, n, 500):
            store.upsert(chunks[start : start + 500])
        info = store._shard.info()
        assert info.indexed_vectors_count == n, "the optimizer ran and indexed every vector"

        found = short = 0
        queries = 100
        for qi in range(queries):
            tenant = qi % tenants
            q = unit(rng)[0]
            mine = np.flatnonzero(owner == tenant)
            exact = set(mine[np.argsort(-(vectors[mine] @ q))[:5]].tolist())
            hits = store.search(f"t{tenant}", q.tolist(), 5)
            short += len(hits) < 5
            found += len(exact & {h.chunk_index for h in hits})
        recall = found / (5 * queries)
        assert short == 0
        assert recall >= 0.99, f"filtered top-5 recall {recall:.3f}"
    finally:
        store.close()


# -- hybrid search (dense + BM25 terms, fused by Qdrant's RRF) ---------------------------------


def coded_chunks(tenant: str, rng: np.random.Generator, n: int = 12, version: int = 1):
    """n chunks of prose; chunk 5 alone names the product code Q7731."""
    chunks = make_chunks(tenant, "catalogue", version, unit(rng, n))
    words = ["pallets wait in the reserve", "stock moves between zones", "counts run weekly"]
    return [
        dataclasses.replace(
            c,
            text=(f"frost cream, 2 L tub: `Q7731`, home zone FZ9 ({tenant})" if c.chunk_index == 5
                  else f"{words[c.chunk_index % 3]} ({tenant}, part {c.chunk_index})"),
        )
        for c in chunks
    ]


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_hybrid_search_finds_an_exact_code_and_keeps_dense_scores(store: ChunkStore) -> None:
    rng = np.random.default_rng(20)
    chunks = coded_chunks("acme", rng)
    store.upsert(chunks)
    q = unit(rng)[0].tolist()  # a query vector near none of them: only the term can find #5

    dense = store.search("acme", q, 3)
    hybrid = store.search("acme", q, 3, text="Which product is Q7731?")

    assert 5 not in {h.chunk_index for h in dense}  # the embedding does not find it here
    assert 5 in {h.chunk_index for h in hybrid}
    coded = next(h for h in hybrid if h.chunk_index == 5)
    assert coded.terms is not None and coded.terms > 0
    # Every score is the chunk's cosine to the query, whatever found it.
    for h in hybrid:
        assert h.score == pytest.approx(cosine(chunks[h.chunk_index].vector, q), abs=1e-4)
    # The routing signal is the dense one: the same top score as the dense search.
    assert hybrid.top_score == pytest.approx(dense[0].score, abs=1e-5)
    assert dense.top_score == pytest.approx(dense[0].score, abs=1e-6)
    assert all(h.terms is None for h in dense)
    # No indexable word (stop words only): the dense search.
    assert [h.chunk_id for h in store.search("acme", q, 3, text="the of and")] == [
        h.chunk_id for h in dense
    ]


def test_hybrid_search_keeps_tenants_and_versions_apart(store: ChunkStore) -> None:
    rng = np.random.default_rng(21)
    store.upsert(coded_chunks("tenant-a", rng))
    store.upsert(coded_chunks("tenant-b", rng, n=8))
    q = unit(rng)[0].tolist()
    text = "Q7731 frost cream tub"

    hits = store.search("tenant-b", q, 10, text=text)
    assert len(hits) == 8 and all("tenant-b" in h.text for h in hits)
    assert {h.chunk_id for h in hits} == {chunk_id("tenant-b", "catalogue", 1, i) for i in range(8)}
    assert any(h.terms is not None for h in hits)
    assert store.search("tenant-c", q, 10, text=text) == []
    assert store.search("tenant-c", q, 10, text=text).top_score is None

    # The exclude of (document, version) holds on the term side too.
    store.upsert(coded_chunks("tenant-b", rng, n=8, version=2))
    assert {h.version for h in store.search("tenant-b", q, 16, text=text)} == {1, 2}
    only_new = store.search("tenant-b", q, 16, text=text, exclude={("catalogue", 1)})
    assert {h.version for h in only_new} == {2} and len(only_new) == 8
    store.delete_version("tenant-b", "catalogue", 2)
    assert store.search("tenant-b", q, 16, text=text, exclude={("catalogue", 1)}) == []


def test_dense_mode_ignores_the_text(tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    store = open_chunk_store(QdrantSettings(path=tmp_path / "q", retrieval="dense"), tmp_path)
    try:
        store.ensure_collection(DIM)
        store.upsert(coded_chunks("acme", rng))
        q = unit(rng)[0].tolist()
        hits = store.search("acme", q, 3, text="Q7731")
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in store.search("acme", q, 3)]
        assert all(h.terms is None for h in hits)
    finally:
        store.close()


def test_an_edge_shard_from_before_hybrid_search_is_upgraded_on_open(tmp_path: Path) -> None:
    """A shard written by the dense-only code (one unnamed vector, no term vector) gets its
    term vectors from the payload text when the new code opens it, and searches hybrid."""
    import qdrant_edge as qe

    from ingest.vector_store import chunk_payload

    rng = np.random.default_rng(23)
    path = tmp_path / "old"
    chunks = coded_chunks("acme", rng, n=700)  # more than one backfill batch
    old = qe.EdgeShard.create(
        str(path), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine))
    )
    old.update(qe.UpdateOperation.upsert_points(
        [qe.Point(c.id, c.vector, chunk_payload(c)) for c in chunks]
    ))
    old.flush()
    old.close()

    store = open_chunk_store(QdrantSettings(path=path), tmp_path)
    try:
        store.ensure_collection(DIM)
        assert store.count("acme") == 700
        q = unit(rng)[0].tolist()
        hits = store.search("acme", q, 3, text="Q7731")
        assert 5 in {h.chunk_index for h in hits}
        store.upsert(coded_chunks("acme", rng, n=3, version=2))  # new writes carry both vectors
    finally:
        store.close()
    again = open_chunk_store(QdrantSettings(path=path), tmp_path)  # nothing left to upgrade
    try:
        assert again.count("acme") == 703
        assert 5 in {h.chunk_index for h in again.search("acme", q, 3, text="Q7731",
                                                         exclude={("catalogue", 2)})}
    finally:
        again.close()


@pytest.mark.filterwarnings("ignore")
def test_a_server_collection_from_before_hybrid_search_is_upgraded_on_open(
    tmp_path: Path,
) -> None:
    """The same on qdrant-client's local mode: a collection made and filled by the dense-only
    code (llama-index, no term vector) gets the term vector and its values when opened."""
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    from ingest.store_qdrant import _node

    rng = np.random.default_rng(24)
    client = QdrantClient(path=str(tmp_path / "local"))
    name = QdrantSettings().collection
    client.create_collection(
        name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    QdrantVectorStore(name, client=client, index_doc_id=False).add(
        [_node(c) for c in coded_chunks("acme", rng, n=300)]
    )
    store = ServerChunkStore(client, QdrantSettings())
    try:
        store.ensure_collection(DIM)
        assert store.count("acme") == 300
        q = unit(rng)[0].tolist()
        hits = store.search("acme", q, 3, text="Q7731")
        assert 5 in {h.chunk_index for h in hits}
        assert hits.top_score == pytest.approx(store.search("acme", q, 1)[0].score, abs=1e-5)
    finally:
        store.close()


def test_edge_refuses_writes_on_a_nearly_full_disk_instead_of_dying(tmp_path: Path) -> None:
    """Edge writes through memory maps: on a full filesystem the write is a SIGBUS that kills
    the process. The store refuses the write (StoreFull) while free space is under its floor,
    and writes again once space is back. A real small filesystem (tmpfs; root only)."""
    import subprocess

    from ingest.vector_store import StoreFull

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        settings = QdrantSettings(path=mnt / "q", min_free_mb=8, optimize_after_points=100_000)
        store = EdgeChunkStore(mnt / "q", settings)
        store.ensure_collection(DIM)
        rng = np.random.default_rng(9)
        store.upsert(make_chunks("acme", "a", 1, unit(rng, 4)))
        ballast = mnt / "ballast"
        with open(ballast, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
        with pytest.raises(StoreFull, match="MB free"):
            store.upsert(make_chunks("acme", "b", 1, unit(rng, 4)))
        with pytest.raises(StoreFull):
            store.delete_document("acme", "a")
        assert store.count("acme") == 4  # reads go on
        ballast.unlink()
        store.upsert(make_chunks("acme", "b", 1, unit(rng, 4)))
        assert store.count("acme") == 8
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
