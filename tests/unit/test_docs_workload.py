"""docs/workloads.md's complete example is a working workload and a valid job config."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from spotray.config import parse_config
from spotray.workload import load, smoke_check

DOC = (Path(__file__).resolve().parents[2] / "docs" / "workloads.md").read_text()


def test_the_complete_example_runs(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", DOC, re.S).group(1)
    job = yaml.safe_load(re.search(r"```yaml\n(.*?)```", DOC, re.S).group(1))
    (tmp_path / "my_model.py").write_text(code)
    cfg = parse_config(job, "docs/workloads.md")
    try:
        workload = load(cfg.workload.entrypoint, cfg.workload.args, str(tmp_path))
        facts = smoke_check(workload, cfg.workload.entrypoint, cfg.seed)
    finally:
        sys.modules.pop("my_model", None)
    assert facts.parameters == 32 + 32 + 32 + 1
