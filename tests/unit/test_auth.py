"""The cluster's Ray token: created once, private, kept."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from spotray.cluster.auth import ensure_token


def test_a_private_token_is_created_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    path, created = ensure_token()
    assert created and path == tmp_path / ".ray" / "auth_token"
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 32 random bytes, as Ray generates
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token() == (path, False) and path.read_text() == token
