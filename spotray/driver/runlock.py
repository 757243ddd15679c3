"""One run per run folder at a time: a lock file beside the folder, in the same storage.

Two `spotray train` of one config at once would adopt each other's checkpoints and delete
each other's folders. The lock is `<storage_path>/.<name>.lock` (beside the run, so that
`--fresh` does not delete it): JSON naming the holder's host, process, its start and a
heartbeat the holder renews every HEARTBEAT_S. A holder counts as gone when, on this host,
its process no longer exists (a SIGKILL frees the lock at once), or, elsewhere, when its
heartbeat is older than STALE_S. S3 has no compare-and-swap here, so a start writes the
lock and reads it back after a moment: two starts in the same second see one winner.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import psutil

from spotray.errors import SpotrayError
from spotray.runtime.storage import Location

HEARTBEAT_S = 15.0
STALE_S = 90.0  # six missed heartbeats
SETTLE_S = 0.5  # between writing the lock and reading it back


class RunInUse(SpotrayError):
    """Another live process holds the run."""

    exit_code = 2


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    process_start: float  # the process's create time: a reused pid is another process
    token: str
    since: float
    heartbeat: float

    def alive(self, now: float) -> bool:
        if self.host == socket.gethostname():
            try:
                return psutil.Process(self.pid).create_time() == self.process_start
            except psutil.NoSuchProcess:
                return False
        return now - self.heartbeat < STALE_S


def _short(err: OSError) -> str:
    return " ".join(str(err).split())[:200]


def lock_location(run: Location) -> Location:
    parent, name = run.path.rsplit("/", 1)
    uri_parent = run.uri.rsplit("/", 1)[0]
    return Location(run.fs, f"{parent}/.{name}.lock", f"{uri_parent}/.{name}.lock")


def read_holder(lock: Location) -> Holder | None:
    """The lock's holder; None when there is no lock or it is unreadable (a torn write)."""
    try:
        with lock.fs.open_input_stream(lock.path) as f:
            return Holder(**json.loads(f.read()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def hold(run: Location, name: str) -> Iterator[None]:
    """Hold the run's lock for the block, renewing it; `RunInUse` when a live process has it."""
    lock = lock_location(run)
    me = Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        process_start=psutil.Process().create_time(),
        token=uuid.uuid4().hex,
        since=time.time(),
        heartbeat=time.time(),
    )
    try:  # the lock is the first write to the storage: its probe, before Ray starts
        _refuse_if_held(lock, name, me)
        _write(lock, me)
    except OSError as err:
        where = lock.uri.rsplit("/", 1)[0]
        raise SpotrayError(f"checkpoint storage {where} cannot be written: {_short(err)}") from None
    time.sleep(SETTLE_S)
    _refuse_if_held(lock, name, me)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                _write(lock, replace(me, heartbeat=time.time()))

    renewer = threading.Thread(target=renew, name="spotray-run-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        holder = read_holder(lock)
        if holder is not None and holder.token == me.token:
            with contextlib.suppress(OSError):
                lock.fs.delete_file(lock.path)


def _refuse_if_held(lock: Location, name: str, me: Holder) -> None:
    holder = read_holder(lock)
    if holder is None or holder.token == me.token or not holder.alive(time.time()):
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.since))
    raise RunInUse(
        f"run {name} is in use by process {holder.pid} on {holder.host} since {started} ({lock.uri}); "
        "wait for it to end, or give this config another name"
    )


def _write(lock: Location, holder: Holder) -> None:
    lock.fs.create_dir(lock.path.rsplit("/", 1)[0], recursive=True)
    with lock.fs.open_output_stream(lock.path) as f:
        f.write(json.dumps(asdict(holder)).encode())
