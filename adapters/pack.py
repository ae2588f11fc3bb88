"""The client's side of an upload: an adapter folder packed as the .tar.gz `POST /v1/adapters`
takes. Used by `ragtune adapters register`, the benchmarks and the tests; the server never packs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from adapters.peft_files import CONFIG_NAME


def pack_adapter(folder: Path) -> bytes:
    """A .tar.gz (in memory) of an adapter folder's regular files, paths relative to it: the
    PEFT files and, when `adapters train` wrote one, the training record (TRAINING_NAME), which
    the server checks and keeps so that the adapter is served the context it was trained with."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                raise ValueError(f"{path} is a symbolic link; the server refuses links")
            if not path.is_file():
                continue
            tf.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buf.getvalue()
