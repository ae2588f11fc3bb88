"""How retrieved chunks are shown to the model. One definition, used both when serving (the rag
and adapter_rag paths) and when training adapters RAFT-style (adapters/raft.py), so an adapter
sees context at answer time exactly as it was trained with it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

# The header says some passages may be irrelevant: RAFT training puts distractors beside the
# relevant passage, and serving retrieves top-k of which only some answer the question.
CONTEXT_HEADER = "Context passages (some may be irrelevant to the question):"


def format_context(chunks: Sequence[str]) -> str:
    """The system-message text that carries retrieved passages: a header, then "[1] ...",
    "[2] ..." blocks. Citation numbers in answers refer to these."""
    blocks = "\n\n".join(f"[{i}] {text.strip()}" for i, text in enumerate(chunks, start=1))
    return f"{CONTEXT_HEADER}\n\n{blocks}"


def with_context(messages: Sequence[dict], chunks: Sequence[str]) -> list[dict]:
    """Messages with the passages added: appended to the leading system message (the tenant's
    system prompt) or, without one, as a new system message in front."""
    messages = [dict(m) for m in messages]
    if not chunks:
        return messages
    context = format_context(chunks)
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{content_text(messages[0].get('content')).rstrip()}\n\n{context}"
        return messages
    return [{"role": "system", "content": context}, *messages]


def content_text(content) -> str:
    """A message's text: its string, or its text parts joined (OpenAI's list-of-parts form)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content or ""


def fit_to_budget(
    chunks: list[str], counts: Sequence[int | None], max_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[str]:
    """The best-ranked chunks that fit in `max_tokens` (always at least the first, cut).
    `counts`: each chunk's token count where already known (stored at ingestion), else None;
    those are counted with `count_tokens`."""
    kept, used = [], 0
    for text, known in zip(chunks, counts, strict=True):
        n = known if known is not None else count_tokens(text)
        if used + n > max_tokens:
            if not kept:
                ids_budget = max(1, max_tokens * len(text) // max(n, 1))
                kept.append(text[:ids_budget])
            break
        kept.append(text)
        used += n
    return kept
