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
DATA_SUFFIX = ".onnxdata"  # workers.external_data.DATA_SUFFIX


class ArtifactStore(Protocol):
    def put(self, stream: IO[bytes]) -> str: ...
    def put_path(self, path: Path) -> str: ...
    def put_model(self, model_path: Path, data_files: list[Path]) -> str: ...
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
        digest, tmp_name = self._receive(stream)
        final = self.path(digest)
        self._place(tmp_name, final)
        return digest

    def put_model(self, model_path: Path, data_files: list[Path]) -> str:
        """Store an ONNX model and its external data files; the model's digest.

        The data files go beside the model's file under their own names, which must be
        `<sha256 of the file>.onnxdata` (`workers.external_data.content_address_external_data`
        names them so and points the model at those names): onnxruntime resolves them relative
        to the model's file, and two models never clash over a name. The data is stored first,
        so a model in the store always has its data."""
        hasher = hashlib.sha256()
        with open(model_path, "rb") as stream:
            while chunk := stream.read(CHUNK):
                hasher.update(chunk)
        folder = self.path(hasher.hexdigest()).parent
        for data in data_files:
            with open(data, "rb") as stream:
                data_digest, tmp_name = self._receive(stream)
            if data.name != data_digest + DATA_SUFFIX:
                Path(tmp_name).unlink(missing_ok=True)
                raise ValueError(f"{data.name!r} is not named by its content ({data_digest}{DATA_SUFFIX})")
            self._place(tmp_name, folder / data.name)
        return self.put_path(model_path)

    def _receive(self, stream: IO[bytes]) -> tuple[str, str]:
        """Copy `stream` to a temp file in the store; (its sha256, the temp file's name)."""
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return hasher.hexdigest(), tmp_name

    @staticmethod
    def _place(tmp_name: str, final: Path) -> None:
        try:
            final.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            os.chmod(tmp_name, 0o640)
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def put_path(self, path: Path) -> str:
        with open(path, "rb") as stream:
            return self.put(stream)

    def copy_to(self, digest: str, dest: Path) -> Path:
        shutil.copyfile(self.path(digest), dest)
        return dest


def artifact_store() -> LocalArtifactStore:
    return LocalArtifactStore(settings.MODELPORT_ARTIFACT_ROOT)
