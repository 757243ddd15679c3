"""A worker's setup hook imports at the lowest CPU priority, and leaves no thread behind at it.

A warm spare imports while the training it stands by for runs on the same node; on the two
cores of the preemption benchmark its imports slowed the steps beside them (spotray's
goodput there rose from 0.73 to 0.79 of the uninterrupted run's with them yielding,
BENCHMARKS.md). The probe module below records the priority its import ran at, and starts
a thread as libraries do at import (pyarrow starts two).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotray.runtime import preload

PROBE = """
import os, threading

ran_at = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
started = threading.Event()
stop = threading.Event()
helper_tid = None


def _helper():
    global helper_tid
    helper_tid = threading.get_native_id()
    started.set()
    stop.wait()


threading.Thread(target=_helper, daemon=True).start()
started.wait()
"""


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"spotray_preload_probe_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(preload.MODULES_ENV, name)
    monkeypatch.setattr(preload, "MODULES", ())  # torch and Ray Train: imported here already
    monkeypatch.setattr(preload, "_note_when_taken", lambda: None)  # no Ray worker to watch
    yield name
    module = sys.modules.pop(name, None)
    if module is not None:
        module.stop.set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_imports_run_at_the_lowest_priority_and_the_training_thread_keeps_its_own(probe: str) -> None:
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    preload.preload()

    module = sys.modules[probe]
    assert module.ran_at == preload.IMPORT_NICE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
    if os.geteuid() == 0:  # raising a thread's priority back takes root (or CAP_SYS_NICE)
        assert os.getpriority(os.PRIO_PROCESS, module.helper_tid) == 0
