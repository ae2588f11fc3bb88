"""Embeddings: /v1/embeddings (OpenAI's shape, the served embedding model)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol.base import ResponseBody


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's other fields (user) are accepted

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts (token arrays are refused: send text)."
    )
    model: str | None = Field(None, description="The served embedding model's name, or absent.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Only the model's own dimension.")


class Embedding(ResponseBody):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="Floats, or base64 of float32 (little-endian)."
    )


class EmbeddingUsage(ResponseBody):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(ResponseBody):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
