"""Content-addressed artifact storage (sha256), behind a small protocol chosen by setting."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Protocol

from django.conf import settings

CHUNK = 1024 * 1024


class ArtifactStore(Protocol):
    def put(self, stream: IO[bytes]) -> str: ...
    def put_path(self, path: Path) -> str: ...
    def path(self, digest: str) -> Path: ...
    def exists(self, digest: str) -> bool: ...


class LocalArtifactStore:
    """Files under `root/sha256/ab/<digest>`. Writes go to a temp file and are renamed into place,
    so a reader never sees a partial artifact and identical uploads are stored once.

    Files are 0640 and folders 0750: never world-readable, because sandboxed user code runs as
    an unprivileged uid that can read any world-readable file (other tenants' models)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / "sha256" / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, stream: IO[bytes]) -> str:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
            digest = hasher.hexdigest()
            final = self.path(digest)
            final.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            os.chmod(tmp_name, 0o640)
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return digest

    def put_path(self, path: Path) -> str:
        with open(path, "rb") as stream:
            return self.put(stream)

    def copy_to(self, digest: str, dest: Path) -> Path:
        shutil.copyfile(self.path(digest), dest)
        return dest


def artifact_store() -> LocalArtifactStore:
    return LocalArtifactStore(settings.MODELPORT_ARTIFACT_ROOT)
