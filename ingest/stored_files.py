"""An upload's files on disk, under <uploads>/<tenant>/<job>/: each file's original bytes
(`<i>.orig`) and its parsed sections (`<i>.sections.json`, the path its DocumentVersion keeps).

The sections are parsed once, at upload time, so the worker and the advisor never re-read the
original: `store_upload` is the one writer of that JSON and `load_sections` its one reader."""

from __future__ import annotations

import json
from pathlib import Path

from ingest.readers import Section
from ingest.uploads import Prepared


def store_upload(job_dir: Path, prepared: list[Prepared]) -> list[Path]:
    """The sections files, in the upload's order."""
    job_dir.mkdir(parents=True)
    paths = []
    for i, p in enumerate(prepared):
        # Our own names: a client's file name never becomes a path.
        (job_dir / f"{i}.orig").write_bytes(p.upload.data)
        path = job_dir / f"{i}.sections.json"
        path.write_text(json.dumps([{"text": s.text, "meta": s.meta} for s in p.sections]))
        paths.append(path)
    return paths


def load_sections(path: str | Path) -> list[Section]:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Section(r["text"], r.get("meta", {})) for r in raw]


def remove_stored(paths: list[str]) -> None:
    """The files of these versions (each sections path with its original), and their upload's
    folder once nothing of it is left."""
    for p in map(Path, paths):
        for f in p.parent.glob(p.name.split(".")[0] + ".*"):
            f.unlink(missing_ok=True)
        try:
            p.parent.rmdir()
        except OSError:
            pass  # other files of the same upload remain


def original_of(sections_path: str | Path) -> Path:
    """The uploaded bytes beside a version's sections file."""
    p = Path(sections_path)
    return p.parent / (p.name.split(".")[0] + ".orig")
