"""The node image: parsed, since no Docker engine runs here."""

from __future__ import annotations

import re
from importlib.metadata import requires
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each line of the Dockerfile, comments dropped."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_image_ray_matches_pyproject_and_installed_ray() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu", froms[0])
    assert match, froms[0]
    image_ray = match.group(1)

    ray_dep = next(d for d in requires("spotray") if d.startswith("ray["))
    pinned = re.search(r"==\s*([\d.]+)\.\*", ray_dep).group(1)
    assert image_ray.startswith(pinned + "."), (image_ray, ray_dep)
    assert ray.__version__ == image_ray


def test_image_installs_the_project_and_its_command() -> None:
    steps = instructions()
    copied = " ".join(args for word, args in steps if word == "COPY")
    for part in ("pyproject.toml", "spotray", "train"):
        assert part in copied
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "pip install --no-cache-dir ." in runs
    assert "spotray --help" in runs
    assert "torch" in runs
