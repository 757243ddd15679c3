"""The worker warm-up: torch and torch._dynamo import on a background thread."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import sys, threading, time
import spotray.warm
assert "torch" not in sys.modules
spotray.warm.start()
assert threading.current_thread() is threading.main_thread()
deadline = time.time() + 120
while "torch._dynamo" not in sys.modules or any(t.name == "spotray-warm" for t in threading.enumerate()):
    assert time.time() < deadline, "torch._dynamo never imported"
    time.sleep(0.05)
import torch
opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])  # finds torch._dynamo imported
print("ok")
"""


def test_start_imports_torch_and_dynamo_in_the_background() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
