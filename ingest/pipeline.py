"""llama-index's IngestionPipeline: sections -> chunks (SentenceSplitter, sized in the embedding
model's own tokens) -> embeddings -> Chunk records with deterministic ids."""

from __future__ import annotations

from llama_index.core import Document as LlamaDocument
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode, TransformComponent

from core.settings import ChunkingSettings
from ingest.embedding import Embedder
from ingest.readers import Section
from ingest.vector_store import Chunk, chunk_id


class _Embed(TransformComponent):
    """Embeds through the shared Embedder (one model, serialised calls)."""

    embedder: Embedder

    def __call__(self, nodes: list[BaseNode], **kwargs) -> list[BaseNode]:
        vectors = self.embedder.texts([n.get_content() for n in nodes])
        for node, vector in zip(nodes, vectors, strict=True):
            node.embedding = vector
        return nodes


class ChunkPipeline:
    def __init__(self, embedder: Embedder, settings: ChunkingSettings) -> None:
        self.embedder = embedder
        self.splitter = self.splitter_for(settings, embedder.tokenizer)
        # No cache: jobs are re-run only after a crash, and a cache would grow with every upload.
        self.pipeline = IngestionPipeline(
            transformations=[self.splitter, _Embed(embedder=embedder)], disable_cache=True
        )

    @staticmethod
    def splitter_for(settings: ChunkingSettings, tokenizer=None) -> SentenceSplitter:
        """The splitter ingestion uses, sized in the embedding model's tokens (training builds
        its RAFT context with it too, so context looks the same in training and serving)."""
        if tokenizer is None:
            from transformers import AutoTokenizer

            from ingest.embedding import default_model_path

            tokenizer = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
        return SentenceSplitter(
            chunk_size=settings.chunk_tokens,
            chunk_overlap=settings.overlap_tokens,
            tokenizer=lambda text: tokenizer.encode(text, add_special_tokens=False),
        )

    @staticmethod
    def documents(sections: list[Section]) -> list[LlamaDocument]:
        return _documents(sections)

    def split(self, sections: list[Section]) -> list[BaseNode]:
        return self.splitter.get_nodes_from_documents(_documents(sections))

    def run(
        self,
        sections: list[Section],
        *,
        tenant_id: str,
        document_id: str,
        version: int,
        source: str,
        metadata: dict,
    ) -> list[Chunk]:
        nodes = self.pipeline.run(documents=_documents(sections))
        return [
            Chunk(
                id=chunk_id(tenant_id, document_id, version, i),
                tenant_id=tenant_id,
                document_id=document_id,
                version=version,
                chunk_index=i,
                text=node.get_content(),
                source=source,
                vector=list(node.embedding),
                metadata={**metadata, **{k: v for k, v in node.metadata.items() if v is not None}},
                tokens=self.embedder.count_tokens(node.get_content()),
            )
            for i, node in enumerate(nodes)
        ]


def _documents(sections: list[Section]) -> list[LlamaDocument]:
    return [
        LlamaDocument(
            text=s.text,
            metadata=s.meta,
            excluded_embed_metadata_keys=list(s.meta),
            excluded_llm_metadata_keys=list(s.meta),
        )
        for s in sections
    ]
