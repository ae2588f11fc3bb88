"""Turn an uploaded file into text sections, or a clear reason why not.

Runs at upload time (so an unreadable or empty file is a 422 before anything is stored) and
its output is what the worker indexes. Parsers are maintained libraries (pypdf, BeautifulSoup,
json); type is decided by the file's extension and checked against its content.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

from core.errors import EmptyFile, UnreadableFile, UnsupportedType

TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
}


@dataclass
class Section:
    text: str
    meta: dict = field(default_factory=dict)


def content_type_for(filename: str) -> str:
    dot = filename.rfind(".")
    ext = filename[dot:].lower() if dot > 0 else ""
    if ext not in TYPES:
        raise UnsupportedType(
            f"'{filename}': unsupported file type; accepted: {', '.join(sorted(TYPES))}",
            param="file",
        )
    return TYPES[ext]


def read_sections(data: bytes, content_type: str, filename: str) -> list[Section]:
    reader = {
        "text/plain": _text,
        "text/markdown": _text,
        "text/html": _html,
        "application/pdf": _pdf,
        "application/json": _json,
        "application/jsonl": _jsonl,
    }[content_type]
    sections = [s for s in reader(data, filename) if s.text.strip()]
    if not sections:
        raise EmptyFile(f"'{filename}' contains no text to index", param="file")
    return sections


def _decode(data: bytes, filename: str) -> str:
    if b"\x00" in data[:8192]:
        raise UnreadableFile(f"'{filename}' is binary, not text", param="file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"'{filename}' is not UTF-8 text (byte {exc.start})", param="file"
        ) from exc


def _text(data: bytes, filename: str) -> list[Section]:
    return [Section(_decode(data, filename))]


def _html(data: bytes, filename: str) -> list[Section]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(data, filename), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else None
    text = soup.get_text("\n", strip=True)
    return [Section(text, {"title": title} if title else {})]


def _pdf(data: bytes, filename: str) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.startswith(b"%PDF-"):
        raise UnreadableFile(f"'{filename}' is not a PDF", param="file")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadableFile(f"'{filename}' is an encrypted PDF", param="file")
        pages = [
            Section(p.extract_text() or "", {"page": i + 1}) for i, p in enumerate(reader.pages)
        ]
    except UnreadableFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise UnreadableFile(f"'{filename}' is a broken PDF: {exc}", param="file") from exc
    return pages


def _flatten(value, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out.extend(_flatten(v, f"{prefix}{k}." if not isinstance(v, (str, int, float, bool))
                                else f"{prefix}{k}"))
        return out
    if isinstance(value, list):
        return [line for v in value for line in _flatten(v, prefix)]
    if value is None:
        return []
    key = prefix.rstrip(".")
    return [f"{key}: {value}" if key else str(value)]


def _json(data: bytes, filename: str) -> list[Section]:
    try:
        doc = json.loads(_decode(data, filename))
    except json.JSONDecodeError as exc:
        raise UnreadableFile(
            f"'{filename}' is not valid JSON (line {exc.lineno}: {exc.msg})", param="file"
        ) from exc
    items = doc if isinstance(doc, list) else [doc]
    return [Section("\n".join(_flatten(item)), {"record": i}) for i, item in enumerate(items)]


def _jsonl(data: bytes, filename: str) -> list[Section]:
    sections = []
    for n, line in enumerate(_decode(data, filename).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnreadableFile(
                f"'{filename}' line {n} is not valid JSON ({exc.msg})", param="file"
            ) from exc
        sections.append(Section("\n".join(_flatten(item)), {"record": n}))
    return sections
