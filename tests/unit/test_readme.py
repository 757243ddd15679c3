"""The config reference names every config key, so the docs cannot fall behind."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from spotray.config import JobConfig

REFERENCE = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        section = next((a for a in inner if issubclass(a, BaseModel)), None)
        out += keys(section, f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return out


def test_every_config_key_is_documented() -> None:
    missing = [k for k in keys(JobConfig) if f"`{k}`" not in REFERENCE]
    assert not missing, f"docs/config.md lacks: {missing}"


def test_no_file_cites_a_document_the_repo_lacks() -> None:
    """Every `*.md` a tracked file names exists (from the repo root, the file's folder or docs/)."""
    import re
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split()
    missing = []
    for name in listed:
        path = repo / name
        if not name.endswith((".md", ".py", ".toml", ".yaml")) or not path.is_file():
            continue
        for ref in re.findall(r"(?<![\w/.-])([\w./-]+\.md)\b", path.read_text(errors="ignore")):
            if ref.startswith("/"):  # an absolute path (a benchmark's output file), not a document
                continue
            if not any((base / ref).exists() for base in (repo, path.parent, repo / "docs")):
                missing.append(f"{name}: {ref}")
    assert not missing, missing
