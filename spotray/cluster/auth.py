"""Ray's token authentication, as spotray's commands use it.

Ray 2.60 checks a shared token on every API and internal RPC when RAY_AUTH_MODE=token.
spotray creates it for the clusters it brings up, sends it only where it cannot be read on
the way, and loads it as Ray's own CLI does.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

from spotray.errors import ConfigError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def token_path() -> Path:
    """Where Ray reads the token: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))


def ensure_token() -> tuple[Path, bool]:
    """This machine's Ray token, created (mode 600) if there is none. Returns (path, created).

    cluster.yaml mounts this file on every node and starts Ray with RAY_AUTH_MODE=token, so
    the cluster answers only whoever holds it.
    """
    path = token_path()
    if path.is_file() and path.read_text().strip():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # Ray's own `ray get-auth-token --generate` writes 32 bytes
    return path, True


def use_token_auth_if_available() -> None:
    """Send this machine's Ray token, as `ray job submit` does with RAY_AUTH_MODE=token.

    Ray 2.60 clusters require a token by default, but its job client only sends one when
    RAY_AUTH_MODE=token is set before Ray is imported. An explicit RAY_AUTH_MODE wins.
    """
    token_file = token_path()
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def check_token_transport(url: str, insecure: bool) -> None:
    """The Ray token is a bearer credential: over plain http only to this machine (or an SSH
    tunnel to it), unless the user insists with --insecure."""
    parsed = urlparse(url)
    if os.environ.get("RAY_AUTH_MODE") != "token" or insecure or parsed.scheme == "https":
        return
    if parsed.hostname not in LOCAL_HOSTS:
        raise ConfigError(
            f"refusing to send the Ray token over plain http to {parsed.hostname}: use https://, "
            "an SSH tunnel to 127.0.0.1 (`spotray dashboard`), or --insecure"
        )
