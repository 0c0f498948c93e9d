"""`avatargen backup DEST` and `avatargen restore SRC`: a copy of an installation taken while it runs, and
brought back into a stopped one.

What a backup holds (the folder layout is the format, with `manifest.json` saying what is in it):
- `config.toml`, the config the server was started with (secrets are in the environment, not in it);
- `data/ledger.sqlite3` (billed time, the budget's history) and `data/visitors.sqlite3` (the visitor
  allowances), each copied through SQLite's online backup API: a consistent snapshot even while the
  server writes them; and `data/admin_token` where the token was generated;
- `buckets/<name>/`: each image with its sidecar, the images held for review (`.review/`) and the owner's
  keep marks (`.kept/`). Each image is copied whole or not at all (one claimed or retired meanwhile is
  left out); the framed copies are not copied: the start-up recovery makes them again.

The backup is written into a hidden folder beside DEST and renamed to DEST when complete, so DEST is either
a whole backup or absent. Restore refuses while a server uses the data folder (it takes the generator's
lock file, which a running server holds) and, unless told to replace, when there is data to overwrite.
With `[storage] backend = "redis"` the buckets, ledger and allowances live in Redis: back up Redis itself
(its RDB or AOF files, see docs/backup.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatargen.config import BUCKET_NAMES, Settings
from avatargen.storage.files.lock import GeneratorLock
from avatargen.storage.files.paths import IMAGE_SUFFIX, META_SUFFIX
from avatargen.timestamps import utc_iso

FORMAT = 1
DATABASES = ("ledger.sqlite3", "visitors.sqlite3")
PRIVATE = ("admin_token",)
HELD, KEPT = ".review", ".kept"
# What a bucket folder holds besides its images: removed when a restore replaces the bucket.
BUCKET_WORK = (HELD, KEPT, ".framed", ".claimed", ".tmp", ".rejected")


class BackupRefused(Exception):
    """The backup or restore cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Copied:
    """What a backup or restore copied: images, held images and keep marks per bucket, and the databases."""

    images: dict[str, int]
    held: dict[str, int]
    kept: dict[str, int]
    databases: tuple[str, ...]

    def describe(self) -> str:
        buckets = "; ".join(f"{name}: {self.images[name]} images, {self.held[name]} held, {self.kept[name]} kept"
                            for name in self.images)
        return f"{buckets}; databases: {', '.join(self.databases) or 'none'}"


def _refuse_redis(settings: Settings) -> None:
    if settings.storage.backend == "redis":
        raise BackupRefused('[storage] backend = "redis": the buckets, the ledger and the visitor allowances live '
                            "in Redis. Back up Redis itself (its RDB snapshot or AOF files; see docs/backup.md) "
                            "and keep a copy of the config")


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite file another process may be writing (the online backup API)."""
    # closing(): sqlite3's own context manager ends a transaction but leaves the file open.
    with closing(sqlite3.connect(source, timeout=30)) as db, closing(sqlite3.connect(target)) as copy:
        db.backup(copy)


def _images(folder: Path) -> Iterator[str]:
    """The ids of the images directly in a folder (a bucket, or its review folder)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in sorted(names):
        if name.endswith(IMAGE_SUFFIX) and not name.startswith("."):
            yield name[: -len(IMAGE_SUFFIX)]


def _copy_images(source: Path, target: Path) -> int:
    """Each image of `source` with its sidecar into `target`, sidecar first; one that vanishes on the way
    (claimed by a visitor, retired, deleted) is left out whole. Written under a temporary name and renamed,
    so a bucket folder never shows half an image."""
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for image_id in _images(source):
        parts = [(source / f"{image_id}{META_SUFFIX}", target / f"{image_id}{META_SUFFIX}"),
                 (source / f"{image_id}{IMAGE_SUFFIX}", target / f"{image_id}{IMAGE_SUFFIX}")]
        try:
            for origin, destination in parts:
                if origin.suffix == META_SUFFIX and not origin.exists():
                    continue  # an image without its sidecar: the bucket's own recovery deals with it
                partial = destination.with_name(f".{destination.name}.partial")
                shutil.copyfile(origin, partial)
                os.replace(partial, destination)
        except FileNotFoundError:
            for _, destination in parts:
                destination.unlink(missing_ok=True)
            continue
        copied += 1
    return copied


def _copy_marks(source: Path, target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    marks = sorted(os.listdir(source)) if source.is_dir() else []
    for mark in marks:
        (target / mark).touch()
    return len(marks)


def _copy_bucket(source: Path, target: Path) -> tuple[int, int, int]:
    return (_copy_images(source, target), _copy_images(source / HELD, target / HELD),
            _copy_marks(source / KEPT, target / KEPT))


def _copy_buckets(pairs: dict[str, tuple[Path, Path]]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    images, held, kept = {}, {}, {}
    for name, (source, target) in pairs.items():
        images[name], held[name], kept[name] = _copy_bucket(source, target)
    return images, held, kept


def _private_copy(source: Path, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())


def backup(settings: Settings, dest: Path) -> Copied:
    """Copy the installation into the new folder `dest` while the server runs."""
    _refuse_redis(settings)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupRefused(f"{dest} already exists and is not an empty folder: name a new one")
    if not dest.parent.is_dir():
        raise BackupRefused(f"{dest.parent} is not a folder: create it first")
    work = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    try:
        if settings.path is not None:
            shutil.copyfile(settings.path, work / "config.toml")
        data = work / "data"
        data.mkdir()
        databases = []
        for name in DATABASES:
            if (settings.server.data_dir / name).exists():
                _copy_database(settings.server.data_dir / name, data / name)
                databases.append(name)
        for name in PRIVATE:
            if (settings.server.data_dir / name).exists():
                _private_copy(settings.server.data_dir / name, data / name)
        pairs = {name: (Path(getattr(settings.buckets, name).dir), work / "buckets" / name) for name in BUCKET_NAMES}
        images, held, kept = _copy_buckets(pairs)
        copied = Copied(images, held, kept, tuple(databases))
        manifest = {"format": FORMAT, "taken_at": utc_iso(time.time()), "config": str(settings.path or ""),
                    "data_dir": str(settings.server.data_dir), "databases": databases,
                    "buckets": {name: {"dir": str(pairs[name][0]), "images": images[name], "held": held[name],
                                       "kept": kept[name]} for name in BUCKET_NAMES}}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            dest.rmdir()  # the empty folder the owner made for it
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return copied


def read_manifest(source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((source / "manifest.json").read_text())
    except FileNotFoundError:
        raise BackupRefused(f"{source} is not an avatargen backup: it has no manifest.json") from None
    except (OSError, ValueError) as exc:
        raise BackupRefused(f"{source}/manifest.json cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupRefused(f"{source} is a backup of another format ({manifest.get('format')!r}, this avatargen "
                            f"reads {FORMAT})")
    return manifest


def _in_the_way(settings: Settings) -> list[str]:
    """What a restore would overwrite."""
    found = [f"{settings.server.data_dir / name}" for name in DATABASES if (settings.server.data_dir / name).exists()]
    for name in BUCKET_NAMES:
        folder = Path(getattr(settings.buckets, name).dir)
        count = sum(1 for _ in _images(folder)) + sum(1 for _ in _images(folder / HELD))
        if count:
            found.append(f"{count} image(s) in the {name} bucket ({folder})")
    return found


def _clear_bucket(folder: Path) -> None:
    for image_id in list(_images(folder)):
        (folder / f"{image_id}{IMAGE_SUFFIX}").unlink(missing_ok=True)
        (folder / f"{image_id}{META_SUFFIX}").unlink(missing_ok=True)
    for work in BUCKET_WORK:
        shutil.rmtree(folder / work, ignore_errors=True)


def _restore_database(source: Path, target: Path) -> None:
    """The backup's database in place of the target's, with the target's old WAL files gone first (a stale
    WAL beside a replaced database would be replayed into it)."""
    partial = target.with_name(f".{target.name}.partial")
    _copy_database(source, partial)
    for suffix in ("-wal", "-shm"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    os.replace(partial, target)


def restore(settings: Settings, source: Path, *, replace: bool = False) -> Copied:
    """Bring a backup back into the data folder and bucket folders of `settings` (every server stopped)."""
    _refuse_redis(settings)
    manifest = read_manifest(source)
    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    lock = GeneratorLock(settings.server.data_dir)
    if not lock.acquire():
        raise BackupRefused(f"an avatargen server uses {settings.server.data_dir} (pid {lock.holder()}): stop "
                            "every avatargen serve first")
    try:
        if (in_the_way := _in_the_way(settings)) and not replace:
            raise BackupRefused(f"there is data to overwrite ({'; '.join(in_the_way)}): restore into an empty "
                                "installation, or pass --replace to replace it with the backup")
        data = settings.server.data_dir
        databases = []
        for name in manifest.get("databases", []):
            if name in DATABASES:
                _restore_database(source / "data" / name, data / name)
                databases.append(name)
        for name in PRIVATE:
            if (source / "data" / name).exists():
                _private_copy(source / "data" / name, data / name)
        pairs = {}
        for name in BUCKET_NAMES:
            folder = Path(getattr(settings.buckets, name).dir)
            if replace:
                _clear_bucket(folder)
            pairs[name] = (source / "buckets" / name, folder)
        images, held, kept = _copy_buckets(pairs)
        return Copied(images, held, kept, tuple(databases))
    finally:
        lock.release()
