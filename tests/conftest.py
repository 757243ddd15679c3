"""Shared helpers: run the real `spotray` command, write configs, read checkpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SPOTRAY = [sys.executable, "-m", "spotray.cli"]

# A GPT small enough that Ray's start-up, not training, dominates a test run (~70 ms/step
# on 2 CPU cores with 2 workers), with a schedule short enough to finish in seconds.
TEST_CONFIG: dict[str, Any] = {
    "name": "t",
    "seed": 7,
    "workload": {
        "entrypoint": "train.gpt:GPTWorkload",
        "args": {"preset": "tiny", "n_layer": 2, "block_size": 64},
    },
    "optimizer": {
        "global_batch_size": 16,
        "micro_batch_size": 8,
        "steps": 120,
        "lr": 3.0e-3,
        "min_lr": 3.0e-4,
        "warmup_steps": 5,
    },
    "scaling": {"min_workers": 2, "max_workers": 2},
    "checkpoint": {"storage_path": "./runs", "interval": 20, "keep": 10},
    "failure": {"max_failures": 2},
}


@pytest.fixture(autouse=True, scope="session")
def _spotray_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The ledger and price tables of every test go to a temporary home, never ~/.spotray."""
    os.environ["SPOTRAY_HOME"] = str(tmp_path_factory.mktemp("spotray-home"))


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def write_config(directory: Path, update: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(deep_merge(TEST_CONFIG, update or {})))
    return path


def spotray_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SPOTRAY_DEBUG", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def no_aws_env(**extra: str) -> dict[str, str]:
    """spotray's environment with every AWS_* variable taken out: no credentials, no endpoint."""
    return {k: v for k, v in spotray_env(**extra).items() if not k.startswith("AWS_")}


def run_spotray(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the `spotray` CLI as a user would and capture what it prints."""
    return subprocess.run(
        [*SPOTRAY, *args],
        cwd=cwd,
        env=env or spotray_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
