"""The backup file (format `ragtune-backup` 1): one uncompressed tar whose every byte is checked
before a restore writes anything.

Members, in this order, all regular files with relative names (no links, no `..`):

    FORMAT                   "ragtune-backup 1\\n": a foreign file is told by its first member
    registry/registry.db     the SQLite registry (online backup API), or
    registry/registry.pgdump the PostgreSQL registry (pg_dump, custom format)
    vectors/points.jsonl     the embedded vector store's points (ingest/vector_dump.py)
    admin_key                the generated admin key, when the data dir has one
    files/uploads/...        <data dir>/uploads: every upload's original and parsed sections
    files/adapters/...       the adapter root: every stored adapter version's folder
    manifest.json            format and version, ragtune's version, the registry's Alembic
                             revision and this code's head, created_at, the roots the registry's
                             paths were under, each member's size and sha256, and `prefix_sha256`:
                             the sha256 of every byte before the manifest (headers, padding)
    manifest.sha256          the sha256 of manifest.json

What checks what: the members before the manifest, their tar headers and padding by
`prefix_sha256`; the manifest by manifest.sha256; the last two headers by tar's own header
checksum; their padding and the end of the archive must be zeros. So a truncated or bit-flipped
file is refused wherever the damage is, and a restore also re-hashes each member as it writes it
(the file could change between the check and the copy).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from pathlib import Path, PurePosixPath

FORMAT_NAME = "ragtune-backup"
FORMAT_VERSION = 1
FORMAT = "FORMAT"
FORMAT_TEXT = f"{FORMAT_NAME} {FORMAT_VERSION}\n".encode()
MANIFEST = "manifest.json"
MANIFEST_SHA = "manifest.sha256"
REGISTRY = {"sqlite": "registry/registry.db", "postgresql": "registry/registry.pgdump"}
VECTORS = "vectors/points.jsonl"
ADMIN_KEY = "admin_key"
FILE_ROOTS = ("uploads", "adapters")  # members files/<root>/<path under that root>
_SINGLE = {FORMAT, MANIFEST, MANIFEST_SHA, VECTORS, ADMIN_KEY, *REGISTRY.values()}
_BLOCK = 512
_CHUNK = 1 << 20


class BackupRefused(Exception):
    """A file a restore will not use (foreign, damaged, or of another format)."""


class _Hashing:
    """A file object that hashes what passes through it (read or written)."""

    def __init__(self, f, digest) -> None:
        self.f, self.digest = f, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.f.write(data)

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        return data

    def tell(self) -> int:
        return self.f.tell()


class ArchiveWriter:
    """Writes the members in order, then `finish(manifest)`; `abort()` leaves no file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._raw = open(path, "xb")  # noqa: SIM115 - closed by finish() or abort()
        self._prefix = hashlib.sha256()
        self._tar = tarfile.open(fileobj=_Hashing(self._raw, self._prefix), mode="w",
                                 format=tarfile.PAX_FORMAT)
        self.members: dict[str, dict] = {}
        self.add_bytes(FORMAT, FORMAT_TEXT)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, len(data), io.BytesIO(data), mode)

    def add_file(self, name: str, path: Path, mode: int = 0o644) -> bool:
        """False when `path` is gone. Exactly the size it had when opened is read: our files
        only ever grow while they are first written, and those are not yet named by a row."""
        try:
            f = open(path, "rb")  # noqa: SIM115
        except (FileNotFoundError, NotADirectoryError):
            return False
        with f:
            self._add(name, os.fstat(f.fileno()).st_size, f, mode)
        return True

    def _add(self, name: str, size: int, f, mode: int) -> None:
        check_name(name)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, mode, int(time.time())
        digest = hashlib.sha256()
        self._tar.addfile(info, _Hashing(f, digest))
        self.members[name] = {"size": size, "sha256": digest.hexdigest()}

    def finish(self, manifest: dict) -> dict:
        manifest = {**manifest, "format": FORMAT_NAME, "version": FORMAT_VERSION,
                    "members": dict(self.members), "prefix_sha256": self._prefix.hexdigest()}
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        for name, body in ((MANIFEST, data),
                           (MANIFEST_SHA, (hashlib.sha256(data).hexdigest() + "\n").encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(body), 0o644, int(time.time())
            self._tar.addfile(info, io.BytesIO(body))
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        return manifest

    def abort(self) -> None:
        self._raw.close()
        self.path.unlink(missing_ok=True)


def check_name(name: str) -> PurePosixPath:
    """A member name this format uses: one of its fixed names, or files/<root>/<relative path>
    with no empty, `.` or `..` part, no backslash, no NUL."""
    p = PurePosixPath(name)
    ok = (
        name and "\\" not in name and "\x00" not in name and len(name) <= 4096
        and not p.is_absolute() and str(p) == name
        and all(part not in ("", ".", "..") for part in p.parts)
        and (name in _SINGLE or (len(p.parts) > 2 and p.parts[0] == "files"
                                 and p.parts[1] in FILE_ROOTS))
    )
    if not ok:
        raise BackupRefused(f"member name {name[:200]!r} is not one a ragtune backup holds")
    return p


def member_digest(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    f = tar.extractfile(info)
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def verify(path: Path) -> dict:
    """The manifest of the backup at `path`, once every byte of it is checked; BackupRefused
    naming what is wrong (not a ragtune backup, another format version, damaged) otherwise."""
    if not path.is_file():
        raise BackupRefused(f"{path}: no such file")
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupRefused(f"{path} is not a ragtune backup (not a tar archive: {exc})") from None
    with tar:
        try:
            infos, digests = _members(tar, path)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupRefused(f"{path} is damaged: unreadable ({exc}); truncated?") from None
    names = [i.name for i in infos]
    if names[-2:] != [MANIFEST, MANIFEST_SHA]:
        raise BackupRefused(f"{path} is damaged: it ends before its manifest (truncated?)")
    manifest_info, sha_info = infos[-2:]
    with open(path, "rb") as raw:
        raw.seek(manifest_info.offset_data)
        data = raw.read(manifest_info.size)
        raw.seek(sha_info.offset_data)
        if raw.read(sha_info.size) != (hashlib.sha256(data).hexdigest() + "\n").encode():
            raise BackupRefused(f"{path} is damaged: its manifest fails its checksum")
        manifest = _manifest(data, path)
        prefix = hashlib.sha256()
        raw.seek(0)
        left = manifest_info.offset
        while left:
            chunk = raw.read(min(_CHUNK, left))
            if not chunk:
                break
            prefix.update(chunk)
            left -= len(chunk)
        if prefix.hexdigest() != manifest.get("prefix_sha256"):
            raise BackupRefused(f"{path} is damaged: its bytes differ from those it was written "
                                "with (a flipped bit, or a changed header)")
        _check_tail(raw, manifest_info, sha_info, path)
    listed = manifest.get("members")
    if not isinstance(listed, dict) or set(listed) != set(names[:-2]):
        raise BackupRefused(f"{path} is damaged: its members are not those its manifest lists")
    for info in infos[:-2]:
        want = listed[info.name]
        if want.get("size") != info.size or want.get("sha256") != digests[info.name]:
            raise BackupRefused(f"{path} is damaged: member {info.name} fails its checksum")
    return manifest


def _members(tar: tarfile.TarFile, path: Path) -> tuple[list[tarfile.TarInfo], dict[str, str]]:
    infos, digests = [], {}
    for info in tar:
        if not infos and (info.name != FORMAT or tar.extractfile(info).read(64) != FORMAT_TEXT):
            if info.name == FORMAT and tar.extractfile(info).read(64).startswith(b"ragtune-"):
                raise BackupRefused(f"{path} is a ragtune backup of another format version "
                                    f"than this ragtune reads ({FORMAT_NAME} {FORMAT_VERSION})")
            raise BackupRefused(f"{path} is not a ragtune backup (a tar archive, but without "
                                f"the {FORMAT_NAME} marker: its first member is "
                                f"{info.name[:200]!r})")
        check_name(info.name)
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.sparse is not None:
            raise BackupRefused(f"{path}: member {info.name} is not a regular file (a link?)")
        if info.name in digests:
            raise BackupRefused(f"{path}: member {info.name} appears twice")
        digests[info.name] = member_digest(tar, info)
        infos.append(info)
    if not infos:
        raise BackupRefused(f"{path} is not a ragtune backup (an empty tar archive)")
    return infos, digests


def _manifest(data: bytes, path: Path) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BackupRefused(f"{path} is damaged: its manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BackupRefused(f"{path} is not a ragtune backup (its manifest names no format)")
    if manifest.get("version") != FORMAT_VERSION:
        raise BackupRefused(f"{path} is format version {manifest.get('version')!r}; this "
                            f"ragtune reads version {FORMAT_VERSION}")
    return manifest


def _check_tail(raw, manifest_info, sha_info, path: Path) -> None:
    """The last two members sit header to header, every byte after their data (padding, the
    end-of-archive blocks, the record padding) is zero, and the file ends where tar ends it."""
    end_manifest = manifest_info.offset_data + _padded(manifest_info.size)
    end_sha = sha_info.offset_data + sha_info.size
    total = -(-(_padded(end_sha) + 2 * _BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
    contiguous = (manifest_info.offset_data == manifest_info.offset + _BLOCK
                  and sha_info.offset == end_manifest
                  and sha_info.offset_data == sha_info.offset + _BLOCK)
    for info in (manifest_info, sha_info):
        # tar's header checksum skips its own field; our writer's is six octal digits, NUL, space.
        raw.seek(info.offset + 148)
        contiguous = contiguous and re.fullmatch(rb"[0-7]{6}\x00 ", raw.read(8)) is not None
    raw.seek(manifest_info.offset_data + manifest_info.size)
    padding = raw.read(end_manifest - manifest_info.offset_data - manifest_info.size)
    raw.seek(end_sha)
    tail = raw.read(total - end_sha + 1)
    if not contiguous or padding.strip(b"\0") or tail.strip(b"\0") or len(tail) != total - end_sha:
        raise BackupRefused(f"{path} is damaged: its end is not that of the archive written "
                            "(truncated, or bytes changed or added after the manifest)")
