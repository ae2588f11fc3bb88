"""What an upload may be: its files, names, ids, sizes and metadata, checked and parsed before
anything is stored (a bad one is refused with nothing left behind)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from core.errors import InvalidRequest, PayloadTooLarge
from core.settings import DocumentLimits
from ingest.readers import Section, content_type_for, read_sections

DOCUMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass
class Prepared:
    """One file of an upload, accepted: the document it becomes and its parsed sections."""

    document_id: str
    upload: Upload
    content_type: str
    sections: list[Section]


def validate_document_id(document_id: str, param: str = "document_id") -> str:
    # fullmatch: `$` would let a trailing newline through ("x\n")
    if not DOCUMENT_ID.fullmatch(document_id) or ".." in document_id:
        raise InvalidRequest(
            f"invalid document id '{document_id[:140]}': 1-128 characters of letters, digits, "
            "'.', '_' and '-', starting with a letter or digit",
            code="invalid_document_id",
            param=param,
        )
    return document_id


def check_filename(filename: str) -> None:
    """Any file name is stored as the version's `source`: no control characters (PostgreSQL
    refuses a NUL in text, and they have no place in a name)."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in filename):
        raise InvalidRequest(
            f"invalid file name {filename[:140]!r}: it holds control characters",
            code="invalid_filename",
            param="file",
        )


def document_id_from_filename(filename: str) -> str:
    if "/" in filename or "\\" in filename or filename.startswith(".") or "\x00" in filename:
        raise InvalidRequest(
            f"invalid file name '{filename[:140]}': no paths, only a plain file name",
            code="invalid_filename",
            param="file",
        )
    stem = filename.rsplit(".", 1)[0]
    candidate = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:128]
    return validate_document_id(candidate or "document", "file")


def prepare_upload(
    files: list[Upload], document_id: str | None, metadata: dict, limits: DocumentLimits
) -> list[Prepared]:
    """Every file checked and parsed (unreadable or empty: 422), in the upload's order."""
    if not files:
        raise InvalidRequest("no 'file' part in the upload", code="missing_file", param="file")
    if len(files) > limits.max_files:
        raise InvalidRequest(
            f"at most {limits.max_files} files per upload", code="too_many_files", param="file"
        )
    if document_id is not None and len(files) > 1:
        raise InvalidRequest(
            "document_id names one document: send one file with it",
            code="document_id_with_many_files",
            param="document_id",
        )
    if len(json.dumps(metadata)) > limits.max_metadata_bytes:
        raise InvalidRequest(
            f"metadata larger than {limits.max_metadata_bytes} bytes",
            code="metadata_too_large",
            param="metadata",
        )
    prepared = []
    for f in files:
        check_filename(f.filename)
        doc_id = (
            validate_document_id(document_id)
            if document_id is not None
            else document_id_from_filename(f.filename)
        )
        if len(f.data) > limits.max_file_bytes:
            raise PayloadTooLarge(
                f"'{f.filename}' is larger than {limits.max_file_bytes} bytes",
                code="file_too_large",
                param="file",
            )
        ctype = content_type_for(f.filename)
        prepared.append(Prepared(doc_id, f, ctype, read_sections(f.data, ctype, f.filename)))
    ids = [p.document_id for p in prepared]
    if len(set(ids)) != len(ids):
        raise InvalidRequest(
            "two files in one upload map to the same document id",
            code="duplicate_document_id",
            param="file",
        )
    return prepared
