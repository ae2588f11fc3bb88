"""Where a registration's adapter waits until it is stored: a private folder on the adapter
root's file system (storing it is then a rename), filled from an uploaded archive or from a folder
already under the root, validated there (the PEFT files, and the training record when there is
one), and removed whatever happens."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from adapters.archive import copy_capped_file
from adapters.peft_files import CONFIG_NAME
from adapters.training_record import read_training_record
from adapters.validation import AdapterInfo, validate_adapter, validate_archive
from core.errors import AdapterError
from core.settings import Settings


@dataclass(frozen=True)
class Staged:
    """A validated adapter in its staging folder, and its checked training record (None: the
    folder has none)."""

    folder: Path
    info: AdapterInfo
    training: dict | None


class Staging:
    def __init__(self, settings: Settings) -> None:
        self.root = settings.resolved_adapters_root
        self.incoming = self.root / ".incoming"
        self.limits = settings.adapters
        self._served = {
            "base_model_name": settings.base_model_name,
            "base_model_dir": settings.resolved_model_dir,
            "max_rank": settings.engine.max_lora_rank,
        }

    @asynccontextmanager
    async def folder(self) -> AsyncIterator[Path]:
        """A new private folder, removed on the way out with whatever the registration left in
        it (an adapter it stored was moved out by then)."""
        folder = await asyncio.to_thread(self._new_folder)
        try:
            yield folder
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    def _new_folder(self) -> Path:
        self.incoming.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.incoming))

    def from_upload(self, upload: BinaryIO, staging: Path) -> Staged:
        """Blocking: store the uploaded archive, refused once past the size cap, then unpack it
        into `staging/adapter` and validate it. `upload` is closed once copied: a spooled
        upload's disk space is given back before the adapter loads, not after."""
        archive = staging / "upload"
        try:
            copy_capped_file(upload, archive, self.limits.max_archive_bytes)
        finally:
            upload.close()
        folder, info = validate_archive(
            archive,
            staging / "adapter",
            max_bytes=self.limits.max_archive_bytes,
            max_files=self.limits.max_files,
            **self._served,
        )
        return Staged(folder, info, read_training_record(folder, param="file"))

    def from_uri(self, uri: str, staging: Path) -> Staged:
        """Blocking: validate the folder `uri` names under the root, then copy it into
        `staging/adapter` and validate the copy, which is what gets stored (the source may
        change meanwhile)."""
        source = resolve_under_root(uri, self.root)
        if source == self.root or self.incoming in (source, *source.parents):
            raise AdapterError(f"'{uri}' is not an adapter folder", code="uri_not_found",
                               param="uri")
        self._validate(source)
        target = staging / "adapter"
        shutil.copytree(source, target, symlinks=True)
        info = self._validate(target)
        return Staged(target, info, read_training_record(target, param="uri"))

    def _validate(self, folder: Path) -> AdapterInfo:
        return validate_adapter(folder, max_bytes=self.limits.max_archive_bytes, **self._served)


def resolve_under_root(uri: str, root: Path) -> Path:
    """The folder a registration `uri` names, which must lie inside `root` after resolving links.

    Accepts a path relative to the root, an absolute path, or a file:// URI.
    """

    def err(code: str, message: str) -> AdapterError:
        return AdapterError(message, code=code, param="uri")

    if "://" in uri:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise err(
                "unsupported_uri",
                f"uri scheme {parsed.scheme!r} is not supported; give a path under the server's "
                "adapter root (or a file:// URI), or upload an archive instead",
            )
        path_str = unquote(parsed.path)
    else:
        path_str = uri
    if not path_str or "\x00" in path_str:
        raise err("unsupported_uri", "uri is empty or holds a NUL character")
    root_resolved = Path(root).resolve(strict=True)
    candidate = Path(path_str)
    if not candidate.is_absolute():
        candidate = root_resolved / candidate
    lexical = Path(os.path.normpath(candidate))
    outside = err(
        "path_escape",
        f"uri {uri!r} is not inside the server's adapter root; register folders placed under "
        "that root, or upload an archive",
    )
    # Judge the lexical path first, so that probing paths outside the root reveals nothing.
    if not lexical.is_relative_to(root_resolved) or lexical == root_resolved:
        raise outside
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise err("uri_not_found", f"uri {uri!r} names nothing under the adapter root") from None
    if not resolved.is_relative_to(root_resolved) or resolved == root_resolved:
        raise outside  # a symlink inside the root that points out of it
    if not resolved.is_dir():
        raise err(
            "uri_not_found",
            f"uri {uri!r} is not a folder; name the folder holding {CONFIG_NAME}",
        )
    return resolved


