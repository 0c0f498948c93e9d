"""Where the admin token comes from: the environment, the config, or a generated token file.

The generated token is kept in `<data_dir>/admin_token` (mode 0600) and reused by later starts, so an
owner's TUI on the same machine keeps working across restarts and finds it without being told.
"""

from __future__ import annotations

import os
import secrets

from avatargen.api.discovery import read_token_file
from avatargen.config import Secret, Settings


def resolve_admin_token(settings: Settings) -> tuple[Secret, str]:
    """The token and a description of where it came from (never the token itself)."""
    if os.environ.get("AVATARGEN_ADMIN_TOKEN"):
        return settings.admin_token(), "from the AVATARGEN_ADMIN_TOKEN environment variable"
    if settings.admin.token:
        return settings.admin.token, f"from [admin] token in {settings.path}"
    path = settings.admin_token_file
    existing = read_token_file(path)
    if existing:
        return existing, f"from the token file {path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    return Secret(token), f"generated; saved to {path} (mode 0600)"
