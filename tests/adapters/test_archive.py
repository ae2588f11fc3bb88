"""safe_unpack and resolve_under_root: every hostile archive is refused with its code, and
nothing is left behind."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from adapters import archive as archive_mod
from adapters.archive import safe_unpack
from adapters.pack import pack_adapter
from adapters.staging import resolve_under_root
from core.errors import ADAPTER_ERROR_CODES, AdapterError
from tests.helpers import adapter_files as f

MAX_BYTES = 1 << 20
MAX_FILES = 10


def small_adapter(folder: Path) -> Path:
    """Not a real adapter (validation has its own tests): just the files an archive carries."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    return folder


def unpack(archive: Path, dest: Path) -> Path:
    return safe_unpack(archive, dest, max_bytes=MAX_BYTES, max_files=MAX_FILES)


@pytest.mark.parametrize(
    "build, top",
    [
        (lambda src, p: f.tar_gz_of(src, p), None),
        (lambda src, p: f.tar_gz_of(src, p, top="my-adapter"), "my-adapter"),
        (lambda src, p: f.tar_gz_of(src, p, mode="w"), None),  # plain tar
        (lambda src, p: f.zip_of(src, p), None),
        (lambda src, p: f.zip_of(src, p, top="my-adapter"), "my-adapter"),
    ],
    ids=["tar.gz", "tar.gz-folder", "tar", "zip", "zip-folder"],
)
def test_unpacks_good_archives(tmp_path: Path, build, top) -> None:
    src = small_adapter(tmp_path / "src")
    # The name lies on purpose: the type comes from the content.
    archive = build(src, tmp_path / "upload.bin")
    dest = tmp_path / "dest"
    folder = unpack(archive, dest)
    assert folder == (dest / top if top else dest)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (folder / "adapter_model.safetensors").read_bytes() == b"\0" * 1000


def test_macos_junk_is_skipped(tmp_path: Path) -> None:
    src = small_adapter(tmp_path / "src" / "adapter")
    (tmp_path / "src" / "__MACOSX").mkdir()
    (tmp_path / "src" / "__MACOSX" / "._adapter").write_bytes(b"x")
    archive = f.zip_of(tmp_path / "src", tmp_path / "a.zip")
    assert unpack(archive, tmp_path / "dest") == tmp_path / "dest" / "adapter"
    assert src.exists()


def two_folders(dest: Path, tmp: Path) -> Path:
    small_adapter(tmp / "two" / "a")
    small_adapter(tmp / "two" / "b")
    return f.tar_gz_of(tmp / "two", dest)


def no_config(dest: Path, tmp: Path) -> Path:
    (tmp / "nc").mkdir()
    (tmp / "nc" / "weights.safetensors").write_bytes(b"x")
    return f.tar_gz_of(tmp / "nc", dest)


BAD_ARCHIVES = {
    "tar ..": (lambda d, t: f.tar_dotdot(d), "path_escape"),
    "tar absolute": (lambda d, t: f.tar_absolute(d), "path_escape"),
    "tar symlink": (lambda d, t: f.tar_symlink(d), "link_in_archive"),
    "tar hardlink": (lambda d, t: f.tar_hardlink(d), "link_in_archive"),
    "tar device": (lambda d, t: f.tar_device(d), "link_in_archive"),
    "tar declared bomb": (lambda d, t: f.tar_declared_bomb(d, 2 * MAX_BYTES), "archive_too_large"),
    "tar pax-header bomb": (lambda d, t: f.tar_pax_bomb(d, 3 * MAX_BYTES), "archive_too_large"),
    "tar too many files": (lambda d, t: f.tar_many_files(d, 2 * MAX_FILES), "too_many_files"),
    "tar duplicate member": (lambda d, t: f.tar_duplicate_member(d), "invalid_archive"),
    "zip ..": (lambda d, t: f.zip_dotdot(d), "path_escape"),
    "zip absolute": (lambda d, t: f.zip_absolute(d), "path_escape"),
    "zip symlink": (lambda d, t: f.zip_symlink(d), "link_in_archive"),
    "zip bomb": (lambda d, t: f.zip_bomb(d, 2 * MAX_BYTES), "archive_too_large"),
    "zip lying sizes": (
        lambda d, t: f.zip_lying_sizes(d, real=2 * MAX_BYTES, declared=1000),
        "invalid_archive",
    ),
    "zip too many files": (lambda d, t: f.zip_many_files(d, 2 * MAX_FILES), "too_many_files"),
    "not an archive": (lambda d, t: f.not_an_archive(d), "invalid_archive"),
    "gzip of text": (lambda d, t: f.gzip_not_tar(d), "invalid_archive"),
    "truncated tar.gz": (
        lambda d, t: f.truncated_tar_gz(d, small_adapter(t / "src")),
        "invalid_archive",
    ),
    "no adapter_config.json": (no_config, "missing_config"),
    "two top-level folders": (two_folders, "missing_config"),
}


@pytest.mark.parametrize("dest_exists", [False, True], ids=["new-dest", "empty-dest"])
@pytest.mark.parametrize("name", list(BAD_ARCHIVES))
def test_bad_archives_are_refused_and_leave_nothing(
    tmp_path: Path, name: str, dest_exists: bool
) -> None:
    build, code = BAD_ARCHIVES[name]
    work = tmp_path / "work"
    work.mkdir()
    archive = build(tmp_path / "upload.tar.gz", tmp_path)
    dest = work / "unpacked"
    if dest_exists:
        dest.mkdir()
    with pytest.raises(AdapterError) as exc:
        unpack(archive, dest)
    err = exc.value
    assert (err.code, err.status, err.param) == (code, 422, "file"), err.message
    assert code in ADAPTER_ERROR_CODES
    assert err.body()["error"]["type"] == "invalid_request_error"
    assert err.message
    # nothing behind: the destination is gone (or still empty) and nothing escaped it
    assert (sorted(dest.iterdir()) == []) if dest_exists else not dest.exists()
    assert sorted(p.name for p in work.iterdir()) == (["unpacked"] if dest_exists else [])
    assert not (tmp_path / "evil.txt").exists()


def test_bytes_written_are_capped_whatever_the_headers_say(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(AdapterError) as exc:
        archive_mod.copy_capped(io.BytesIO(b"x" * 10_000), target, archive_mod._Budget(4096))
    assert exc.value.code == "archive_too_large"
    assert target.stat().st_size <= 4096


def test_dest_must_be_empty(tmp_path: Path) -> None:
    src = small_adapter(tmp_path / "src")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("x")
    with pytest.raises(ValueError):
        unpack(f.tar_gz_of(src, tmp_path / "a.tgz"), tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").exists()


# ---- resolve_under_root ---------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    small_adapter(tmp_path / "root" / "acme" / "sql")
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "acme" / "link-out").symlink_to(tmp_path / "outside")
    (tmp_path / "root" / "acme" / "link-in").symlink_to(tmp_path / "root" / "acme" / "sql")
    return tmp_path / "root"


@pytest.mark.parametrize(
    "uri", ["acme/sql", "./acme/sql/", "{root}/acme/sql", "file://{root}/acme/sql", "acme/link-in"]
)
def test_resolve_under_root_accepts(root: Path, uri: str) -> None:
    resolved = resolve_under_root(uri.format(root=root), root)
    assert resolved == (root / "acme" / "sql").resolve()


@pytest.mark.parametrize(
    "uri, code",
    [
        ("../outside", "path_escape"),
        ("acme/../../outside", "path_escape"),
        ("{root}/../outside", "path_escape"),
        ("/etc", "path_escape"),
        ("acme/link-out", "path_escape"),  # a symlink inside the root pointing out of it
        (".", "path_escape"),  # the root itself
        ("file:///etc", "path_escape"),
        ("acme/nope", "uri_not_found"),
        ("acme/sql/adapter_config.json", "uri_not_found"),  # a file, not a folder
        ("s3://bucket/adapter", "unsupported_uri"),
        ("file://otherhost/acme/sql", "unsupported_uri"),
        ("", "unsupported_uri"),
    ],
)
def test_resolve_under_root_refuses(root: Path, uri: str, code: str) -> None:
    with pytest.raises(AdapterError) as exc:
        resolve_under_root(uri.format(root=root), root)
    assert (exc.value.code, exc.value.param, exc.value.status) == (code, "uri", 422)
    assert str(root.parent) not in exc.value.message or uri.startswith(("{root}", "file"))


# ---- packing (the CLI's register) -----------------------------------------------------------


def test_pack_adapter_round_trips(tmp_path: Path) -> None:
    src = small_adapter(tmp_path / "src")
    data = pack_adapter(src)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        assert sorted(tf.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]
    (tmp_path / "up.tgz").write_bytes(data)
    assert unpack(tmp_path / "up.tgz", tmp_path / "dest") == tmp_path / "dest"


def test_pack_adapter_refuses_links(tmp_path: Path) -> None:
    src = small_adapter(tmp_path / "src")
    (src / "link").symlink_to("/etc/hostname")
    with pytest.raises(ValueError):
        pack_adapter(src)
