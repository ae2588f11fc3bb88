"""Archives of adapter folders for tests: a folder packed as .tar.gz/.tar or .zip, and each hostile
archive (links, `..` and absolute members, devices, bombs, lying sizes, too many members, not an
archive at all)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path


def tar_gz_of(folder: Path, dest: Path, *, top: str | None = None, mode: str = "w:gz") -> Path:
    """An archive of the folder's files, at top level or under one folder `top`."""
    with tarfile.open(dest, mode) as tf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            tf.add(path, arcname=f"{top}/{rel}" if top else rel, recursive=False)
    return dest


def zip_of(folder: Path, dest: Path, *, top: str | None = None) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                zf.write(path, f"{top}/{rel}" if top else rel)
    return dest


def _tar(dest: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode="w:gz") -> Path:
    with tarfile.open(dest, mode, format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info, None


CONFIG = b'{"peft_type": "LORA"}'


def tar_dotdot(dest: Path) -> Path:
    return _tar(dest, [_file("adapter_config.json", CONFIG), _file("../evil.txt", b"x")])


def tar_absolute(dest: Path) -> Path:
    return _tar(dest, [_file("/tmp/evil.txt", b"x"), _file("adapter_config.json", CONFIG)])


def tar_symlink(dest: Path) -> Path:
    return _tar(dest, [_special("adapter_config.json", tarfile.SYMTYPE, "/etc/passwd")])


def tar_hardlink(dest: Path) -> Path:
    return _tar(
        dest,
        [_file("adapter_config.json", CONFIG), _special("x", tarfile.LNKTYPE, "/etc/passwd")],
    )


def tar_device(dest: Path) -> Path:
    return _tar(dest, [_file("adapter_config.json", CONFIG), _special("dev", tarfile.CHRTYPE)])


def tar_declared_bomb(dest: Path, size: int) -> Path:
    """A few KB compressed, `size` bytes of zeros declared and unpacked."""
    info = tarfile.TarInfo("adapter_model.safetensors")
    info.size = size

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b):  # tarfile copies in blocks; never hold `size` bytes
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(dest, "w:gz") as tf:
        tf.addfile(_file("adapter_config.json", CONFIG)[0], io.BytesIO(CONFIG))
        tf.addfile(info, io.BufferedReader(Zeros()))
    return dest


def tar_pax_bomb(dest: Path, size: int) -> Path:
    """A member whose PAX header alone expands to `size` bytes: no file size to check."""
    info, data = _file("adapter_config.json", CONFIG)
    info.pax_headers = {"comment": "A" * size}
    return _tar(dest, [(info, data)])


def tar_many_files(dest: Path, n: int) -> Path:
    return _tar(
        dest, [_file("adapter_config.json", CONFIG)] + [_file(f"f{i}.txt", b"x") for i in range(n)]
    )


def tar_duplicate_member(dest: Path) -> Path:
    return _tar(dest, [_file("adapter_config.json", CONFIG), _file("adapter_config.json", b"{}")])


def zip_dotdot(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("adapter_config.json", CONFIG)
        zf.writestr("../../evil.txt", b"x")
    return dest


def zip_absolute(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("/etc/evil.txt", b"x")
    return dest


def zip_symlink(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        info = zipfile.ZipInfo("adapter_config.json")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    return dest


def zip_bomb(dest: Path, size: int) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("adapter_config.json", CONFIG)
        with zf.open("adapter_model.safetensors", "w") as w:
            chunk = bytes(1 << 20)
            for _ in range(0, size, len(chunk)):
                w.write(chunk)
    return dest


def zip_lying_sizes(dest: Path, real: int, declared: int) -> Path:
    """Deflated `real` zero bytes whose headers claim only `declared` bytes."""
    import struct

    zip_bomb(dest, real)
    with zipfile.ZipFile(dest) as zf:
        info = zf.getinfo("adapter_model.safetensors")
    data = bytearray(dest.read_bytes())
    struct.pack_into("<I", data, info.header_offset + 22, declared)  # local file header
    central = data.rindex(b"PK\x01\x02")  # the last central directory entry is this member
    struct.pack_into("<I", data, central + 24, declared)
    dest.write_bytes(bytes(data))
    return dest


def zip_many_files(dest: Path, n: int) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("adapter_config.json", CONFIG)
        for i in range(n):
            zf.writestr(f"f{i}.txt", b"x")
    return dest


def not_an_archive(dest: Path) -> Path:
    dest.write_bytes(b"this is a plain text file named like an archive\n" * 20)
    return dest


def gzip_not_tar(dest: Path) -> Path:
    import gzip

    dest.write_bytes(gzip.compress(b"plain text, not a tar stream\n" * 50))
    return dest


def truncated_tar_gz(dest: Path, folder: Path) -> Path:
    tar_gz_of(folder, dest)
    data = dest.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest
