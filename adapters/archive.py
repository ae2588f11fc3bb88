"""Adapter archives in, trusting nothing an upload says about itself.

The type is read from the first bytes, never the file name. Every member name is checked before
anything is written; links, devices and paths that would land outside the destination are
refused; the declared sizes are summed before extraction and the bytes actually written are
counted during it (a bomb's headers may lie), and any failure leaves the destination empty.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from adapters.peft_files import CONFIG_NAME, WEIGHTS_NAME
from core.errors import AdapterError

ArchiveKind = Literal["tar.gz", "tar", "zip"]

_CHUNK = 1 << 20
# tar framing around the payload: a 512-byte header plus up to 511 bytes of padding per member
# (a PAX header doubles that), the end-of-archive blocks and the record padding.
_TAR_FRAMING_PER_MEMBER = 2048
_TAR_FRAMING_SLACK = 1 << 20
# Written by macOS archivers beside the real files; harmless, and they would hide the one
# top-level folder we look for.
_MAC_JUNK = ("__MACOSX",)
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _err(code: str, message: str) -> AdapterError:
    return AdapterError(message, code=code, param="file")


def detect_archive_kind(path: Path) -> ArchiveKind:
    """gzip (we then require a tar inside), zip, or plain tar, from the magic bytes alone."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    raise _err(
        "invalid_archive",
        f"the upload is not an archive this server reads (its first bytes are {head[:8]!r}); "
        "send a .tar.gz, .tgz, .tar or .zip of the adapter folder",
    )


def _member_path(name: str) -> PurePosixPath | None:
    """The relative path a member may be written to; None for the archive's own root ("./")."""
    if "\x00" in name or "\\" in name:
        raise _err(
            "path_escape",
            f"archive member {name!r} has a backslash or NUL in its name; use '/' separators",
        )
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _err(
            "path_escape",
            f"archive member {name!r} has an absolute path; members must be relative to the "
            "adapter folder",
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _err(
            "path_escape",
            f"archive member {name!r} contains '..' and would unpack outside the adapter folder",
        )
    return PurePosixPath(*parts) if parts else None


def _is_junk(rel: PurePosixPath) -> bool:
    return rel.parts[0] in _MAC_JUNK or rel.name.startswith("._")


class _Budget:
    """Bytes still allowed on disk; raises as soon as a write would pass the cap."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.left = max_bytes

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _err(
                "archive_too_large",
                f"the archive unpacks to more than {self.max_bytes} bytes, this server's limit "
                "(its headers understated the size)",
            )


def copy_capped(src: BinaryIO, target: Path, budget: _Budget) -> None:
    """Copy src to a new file, never writing a byte past the budget."""
    # O_EXCL: a second member with the same name is an error, never an overwrite;
    # O_NOFOLLOW: we create no links, but refuse to write through one all the same.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(min(_CHUNK, budget.left + 1)):
            budget.take(len(chunk))
            out.write(chunk)


def copy_capped_file(src: BinaryIO, target: Path, max_bytes: int) -> None:
    """Store an uploaded archive, refusing it as soon as it passes `max_bytes`."""
    try:
        copy_capped(src, target, _Budget(max_bytes))
    except AdapterError as e:
        target.unlink(missing_ok=True)
        raise _err(
            "archive_too_large",
            f"the upload is larger than {max_bytes} bytes, this server's limit for an adapter",
        ) from e


class _CappedStream(io.RawIOBase):
    """A read-only stream that refuses to yield more than `cap` bytes (decompressed tar data)."""

    def __init__(self, inner: BinaryIO, cap: int, max_bytes: int) -> None:
        self.inner, self.cap, self.max_bytes, self.read_bytes = inner, cap, max_bytes, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        room = self.cap - self.read_bytes + 1
        n = room if n is None or n < 0 else min(n, room)
        data = self.inner.read(n)
        self.read_bytes += len(data)
        if self.read_bytes > self.cap:
            raise _err(
                "archive_too_large",
                f"the archive expands to more than {self.cap} bytes (headers and files "
                f"together); this server accepts adapters up to {self.max_bytes} bytes",
            )
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _check_tar_member(m: tarfile.TarInfo) -> PurePosixPath | None:
    if m.issym() or m.islnk():
        kind = "symbolic link" if m.issym() else "hard link"
        raise _err(
            "link_in_archive",
            f"archive member {m.name!r} is a {kind} (to {m.linkname!r}); "
            "only regular files and folders are accepted",
        )
    if m.ischr() or m.isblk() or m.isfifo():
        raise _err(
            "link_in_archive",
            f"archive member {m.name!r} is a device or FIFO; "
            "only regular files and folders are accepted",
        )
    if m.issparse() or not (m.isreg() or m.isdir()):
        raise _err(
            "invalid_archive",
            f"archive member {m.name!r} is of a tar type this server does not unpack "
            "(only regular files and folders are accepted)",
        )
    return _member_path(m.name)


def _unpack_tar(archive: Path, kind: ArchiveKind, dest: Path, max_bytes: int, max_files: int):
    stream_cap = max_bytes + max_files * _TAR_FRAMING_PER_MEMBER + _TAR_FRAMING_SLACK

    @contextmanager
    def members() -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, PurePosixPath | None]]:
        with open(archive, "rb") as raw:
            inner = gzip.GzipFile(fileobj=raw, mode="rb") if kind == "tar.gz" else raw
            capped = io.BufferedReader(_CappedStream(inner, stream_cap, max_bytes), _CHUNK)
            # "r|": a forward-only stream, so nothing can make tarfile seek back and re-read.
            with tarfile.open(fileobj=capped, mode="r|") as tf:
                yield ((tf, m, _check_tar_member(m)) for m in _counted(tf, max_files))

    # Pass 1: every header checked and the declared sizes summed before one byte is written.
    declared = 0
    with members() as it:
        for _, m, _rel in it:
            if m.isreg():
                declared += m.size
                if declared > max_bytes:
                    raise _too_large(declared, max_bytes)
    # Pass 2: write, counting the bytes actually written.
    budget = _Budget(max_bytes)
    with members() as it:
        for tf, m, rel in it:
            if rel is None or _is_junk(rel):
                continue
            target = dest.joinpath(*rel.parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None  # a regular file always has data
            copy_capped(src, target, budget)


def _counted(tf: tarfile.TarFile, max_files: int) -> Iterator[tarfile.TarInfo]:
    for count, m in enumerate(tf, start=1):
        if count > max_files:
            raise _too_many(max_files)
        yield m


def _too_many(max_files: int) -> AdapterError:
    return _err(
        "too_many_files",
        f"the archive has more than {max_files} entries, this server's limit; an adapter "
        f"needs only {CONFIG_NAME} and {WEIGHTS_NAME}",
    )


def _too_large(declared: int, max_bytes: int) -> AdapterError:
    return _err(
        "archive_too_large",
        f"the archive declares {declared} bytes of files, more than this server's limit "
        f"of {max_bytes} bytes",
    )


def _unpack_zip(archive: Path, dest: Path, max_bytes: int, max_files: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise _too_many(max_files)
        rels = []
        for info in infos:
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _err(
                    "link_in_archive",
                    f"archive member {info.filename!r} is a symbolic link; "
                    "only regular files and folders are accepted",
                )
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _err(
                    "link_in_archive",
                    f"archive member {info.filename!r} is a device, FIFO or socket; "
                    "only regular files and folders are accepted",
                )
            if info.flag_bits & 0x1:
                raise _err("invalid_archive", f"archive member {info.filename!r} is encrypted")
            rels.append(_member_path(info.filename))
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise _too_large(declared, max_bytes)
        budget = _Budget(max_bytes)
        for info, rel in zip(infos, rels, strict=True):
            if rel is None or _is_junk(rel):
                continue
            target = dest.joinpath(*rel.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src:
                copy_capped(src, target, budget)


def find_adapter_root(dest: Path) -> Path:
    """The folder holding adapter_config.json: `dest` itself or its one top-level folder."""
    if (dest / CONFIG_NAME).is_file():
        return dest
    entries = sorted(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / CONFIG_NAME).is_file():
        return entries[0]
    found = ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries[:8]) or "nothing"
    raise _err(
        "missing_config",
        f"no {CONFIG_NAME} at the archive's top level or in its single top-level folder "
        f"(found: {found}); pack the folder that peft's save_pretrained wrote",
    )


def clear_folder(dest: Path, remove: bool) -> None:
    """Leave nothing behind: remove `dest`, or only its contents when `remove` is false."""
    if remove:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for entry in dest.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def safe_unpack(archive: Path, dest: Path, *, max_bytes: int, max_files: int) -> Path:
    """Unpack an adapter archive into `dest` (absent or empty) and return the adapter's folder.

    On any failure `dest` is removed (or emptied, if it existed before) and an AdapterError says
    why.
    """
    archive, dest = Path(archive), Path(dest)
    created = not dest.exists()
    if not created and any(dest.iterdir()):
        raise ValueError(f"unpack destination {dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        kind = detect_archive_kind(archive)
        if kind == "zip":
            _unpack_zip(archive, dest, max_bytes, max_files)
        else:
            _unpack_tar(archive, kind, dest, max_bytes, max_files)
        return find_adapter_root(dest)
    except BaseException as e:
        clear_folder(dest, created)
        disk_trouble = isinstance(e, OSError) and e.errno in _DISK_ERRNOS
        if isinstance(e, AdapterError) or not isinstance(e, _MALFORMED) or disk_trouble:
            raise
        raise _invalid(e) from e


# What reading a damaged or hostile archive raises (our own disk's errors excepted).
_MALFORMED = (
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,  # zip: a compression method zipfile does not know
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
)


def _invalid(e: BaseException) -> AdapterError:
    if isinstance(e, FileExistsError | NotADirectoryError | IsADirectoryError):
        detail = "two members unpack to the same path"
    else:
        detail = str(e) or type(e).__name__
    return _err(
        "invalid_archive",
        f"the archive is damaged or malformed ({detail}); send a .tar.gz, .tar or .zip "
        "of the adapter folder",
    )
