"""One run per run folder at a time; a dead holder does not keep the run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from spotray.driver import runlock
from spotray.errors import SpotrayError
from spotray.runtime.storage import Location
from tests.conftest import write_config

HOLDER = """
import sys, time
import pyarrow.fs as pafs
from spotray.driver import runlock
from spotray.errors import SpotrayError
from spotray.runtime.storage import Location
run = Location(pafs.LocalFileSystem(), sys.argv[1], sys.argv[1])
with runlock.hold(run, "t"):
    print("held", flush=True)
    time.sleep(120)
"""


def local(path: Path) -> Location:
    return Location(pafs.LocalFileSystem(), str(path), str(path))


def test_a_held_run_is_refused_until_its_holder_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "runs" / "t"
    (run / "checkpoint_000000010").mkdir(parents=True)
    (run / "checkpoint_000000010" / "spotray.json").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"

        # `spotray train --fresh` of the same run: one line, exit 2, nothing deleted.
        from spotray.cli import app

        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, {})), "--fresh"])
        assert result.exit_code == 2, result.output
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1
        assert f"run t is in use by process {holder.pid}" in line and "wait for it to end" in line
        assert (run / "checkpoint_000000010" / "spotray.json").exists()

        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with runlock.hold(local(run), "t"):  # a dead holder on this host: free at once
            assert runlock.read_holder(runlock.lock_location(local(run))).pid != holder.pid
        assert not (tmp_path / "runs" / ".t.lock").exists(), "released at the end"
    finally:
        holder.kill()


@pytest.mark.parametrize("age_s,refused", [(10.0, True), (runlock.STALE_S + 1, False)])
def test_a_holder_on_another_host_counts_while_its_heartbeat_is_fresh(
    tmp_path: Path, age_s: float, refused: bool
) -> None:
    run = local(tmp_path / "t")
    now = time.time()
    other = {"host": "another-host", "pid": 1, "process_start": 0.0, "token": "x", "since": now - 600}
    (tmp_path / ".t.lock").write_text(json.dumps({**other, "heartbeat": now - age_s}))
    if refused:
        with pytest.raises(runlock.RunInUse, match="in use by process 1 on another-host"):
            with runlock.hold(run, "t"):
                pass
    else:
        with runlock.hold(run, "t"):
            assert runlock.read_holder(runlock.lock_location(run)).host != "another-host"


def test_storage_that_cannot_be_written_is_one_line_before_ray(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    storage = tmp_path / "a-file" / "runs"
    expected = r"checkpoint storage .*a-file/runs cannot be written: .*Not a directory"
    with pytest.raises(SpotrayError, match=expected), runlock.hold(local(storage / "t"), "t"):
        pass
