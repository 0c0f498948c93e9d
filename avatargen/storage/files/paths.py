"""Where each file of a bucket folder lives, and how a file is placed or removed whole.

The layout is the contract (see `avatargen.storage.files.bucket`): `<dir>/<id>.webp` and `<dir>/<id>.json`,
work files in `.tmp/`, claimed uniques in `.claimed/`, framed copies in `.framed/`, held images in
`.review/`, keep markers in `.kept/`, broken images in `.rejected/`, all on one filesystem so that
`os.rename` is atomic. Every part of a bucket (its index, images, held images, claims, repair) finds its
files here and writes them the one way: by way of `.tmp/`, so that nobody ever sees half of one.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avatargen.files import private_folder, write_atomically
from avatargen.imaging import ImageError, check_webp_header
from avatargen.storage.models import ID, stamped

log = logging.getLogger("avatargen.buckets")

IMAGE_SUFFIX = ".webp"
META_SUFFIX = ".json"


def unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def move(source: Path, target: Path) -> bool:
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False
    return True


def is_stale(path: Path, older_than: float, *, since_rename: bool = False) -> bool:
    """Whether a file was last written (or, since_rename, renamed: that moves its ctime) long enough ago.

    A file that vanished meanwhile is not stale: another process is dealing with it.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return time.time() - (stat.st_ctime if since_rename else stat.st_mtime) >= older_than


def listing(folder: Path) -> list[str]:
    """The names in a folder (none if it does not exist)."""
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def ids_in(folder: Path, suffix: str, names: list[str] | None = None) -> set[str]:
    """The ids of the `<id><suffix>` entries in a folder (or in `names`, a listing of it already taken)."""
    cut = len(suffix)
    return {name[:-cut] for name in (listing(folder) if names is None else names)
            if name.endswith(suffix) and ID.fullmatch(name, 0, len(name) - cut)}


def creation_time(metadata: dict[str, Any], path: Path) -> datetime:
    """When an image was made: its sidecar's `created_at`, else its file's mtime."""
    created = metadata.get("created_at")
    return datetime.fromisoformat(created) if isinstance(created, str) else datetime.fromtimestamp(
        path.stat().st_mtime, UTC)


def header_problem(path: Path) -> str | None:
    """What is wrong with an image file, judged by its first 12 bytes against its size; None if nothing."""
    with path.open("rb") as image:
        head = image.read(12)
        size = os.fstat(image.fileno()).st_size
    try:
        check_webp_header(head, size)
    except ImageError as exc:
        return str(exc)
    return None


def prepare_files(bucket: str, image: bytes, metadata: dict[str, Any],
                  image_id: str | None) -> tuple[str, dict[str, Any], datetime, bytes]:
    """The id, metadata (with `created_at`), creation time and sidecar bytes of an image to store."""
    image_id, metadata, created_at = stamped(bucket, image, metadata, image_id)
    return image_id, metadata, created_at, json.dumps(metadata, ensure_ascii=False, indent=1).encode()


class BucketPaths:
    """The folders and file names of one bucket (`frames`: it keeps framed copies), made 0700 if missing."""

    def __init__(self, name: str, directory: Path, *, frames: bool) -> None:
        self.name = name
        self.directory = Path(directory)
        self.image_prefix = os.path.join(self.directory, "")  # `servable`'s paths, built as plain strings
        self.frames = frames
        self.tmp = self.directory / ".tmp"
        self.claimed = self.directory / ".claimed"
        self.framed = self.directory / ".framed"
        self.review = self.directory / ".review"
        self.kept = self.directory / ".kept"
        self.rejected = self.directory / ".rejected"
        for folder in self.folders:
            private_folder(folder)

    @property
    def folders(self) -> tuple[Path, ...]:
        """Every folder the bucket writes to (start-up proves each one writable before the server listens)."""
        return (self.directory, self.tmp, self.claimed, self.review, self.kept, self.rejected,
                *([self.framed] if self.frames else []))

    def image_path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}{IMAGE_SUFFIX}"

    def meta_path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}{META_SUFFIX}"

    def framed_path(self, image_id: str) -> Path:
        return self.framed / f"{image_id}{IMAGE_SUFFIX}"

    def claimed_path(self, image_id: str) -> Path:
        return self.claimed / f"{image_id}{IMAGE_SUFFIX}"

    def held_path(self, image_id: str) -> Path:
        return self.review / f"{image_id}{IMAGE_SUFFIX}"

    def held_meta_path(self, image_id: str) -> Path:
        return self.review / f"{image_id}{META_SUFFIX}"

    def kept_path(self, image_id: str) -> Path:
        return self.kept / image_id

    def place_all(self, files: list[tuple[bytes, Path]]) -> None:
        """Place files in order; if one fails, the ones already placed are removed again."""
        placed: list[Path] = []
        try:
            for data, final in files:
                self.place(data, final)
                placed.append(final)
        except BaseException:
            for path in placed:
                unlink(path)
            raise

    def place(self, data: bytes, final: Path) -> None:
        """Write a file by way of `.tmp/`: it appears whole or not at all (the caller fsyncs the folder)."""
        write_atomically(final, data, work_dir=self.tmp, sync=False)

    def remove(self, image: Path, companions: tuple[Path, ...]) -> bool:
        """Remove an image and the files that go with it, as one step for everyone else: the image is first
        renamed into `.tmp/` (gone at once for visitors, claimers and listings, in every process; a crash
        right after leaves only work files and a sidecar without its image, which recovery removes), then
        the rest is deleted. False, and nothing touched, when the image was not there."""
        doomed = self.tmp / f"{secrets.token_hex(4)}-removed-{image.name}"
        try:
            os.rename(image, doomed)
        except FileNotFoundError:
            return False
        for path in companions:
            unlink(path)
        unlink(doomed)
        return True

    def tidy(self, path: Path) -> bool:
        """Remove a leftover file; False if it was gone or cannot be removed (logged)."""
        try:
            return unlink(path)
        except OSError as exc:
            log.warning("cannot remove leftover %s from the %s bucket: %s", path, self.name, exc)
            return False
