"""What a training worker process imports before Ray hands it work (its setup hook).

Run by every Ray Train worker of a run on a cluster with `failure.warm_spares` as the
process starts (the workers' runtime env names `preload`; spotray.ray_compat.workers), and
by the spares of them. In the warm spares the driver keeps on
each node (spotray.driver.warm) this happens while the old group still trains, so a restart
finds torch, Ray Train, spotray's loop and the workload's module already imported: ~5 s a
process on two cores, more with a big model library. In a worker started cold it is the
same imports the training function would do first.

The imports run on a thread of their own at the lowest CPU priority (`IMPORT_NICE`): a
spare's take only the cores the training beside it leaves idle (on the preemption
benchmark's two cores they slowed its steps), and a restart, which stops the training, leaves
them all the cores. The training thread keeps the process's priority.

A process that waits with its imports done (a spare, not a worker Ray started for an actor
that is already there) says so in Ray's KV (`READY_PREFIX`) until an actor takes it, so that
a restart can go to the nodes whose spares are ready (spotray.elastic.placement).

Nothing here touches a GPU or sizes a thread pool for good: Ray sets a worker's
CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS only when an actor's first task starts, and the
training loop pins torch's threads to OMP_NUM_THREADS then (`runtime.loop`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

from spotray.ray_compat.node import kv_del, kv_keys, kv_put

MODULES_ENV = "SPOTRAY_PRELOAD"  # extra modules, comma-separated: the workload's

# torch._dynamo: torch.optim imports it on an optimizer's first construction (~2 s).
MODULES = ("spotray.runtime.loop", "torch._dynamo")

logger = logging.getLogger("spotray.runtime")

READY_PREFIX = "warm/"  # warm/<job>/<node>/<pid> in spotray's KV namespace: idle, imports done
IMPORT_NICE = 19  # the lowest CPU priority: the imports take only cores the training leaves idle
IDLE_S = 0.5  # a process idle longer than this between its imports and its actor was a spare

_ready_at: float | None = None  # the imports done
_taken_at: float | None = None  # an actor (a Ray Train worker) began in this process


def preload() -> None:
    """Import what training needs, at low CPU priority; a module that fails is logged and left
    to the loop, whose own import then reports it (a failing setup hook would make Ray drop
    the worker)."""
    global _ready_at
    extra = [m for m in os.environ.get(MODULES_ENV, "").split(",") if m]
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    importer = threading.Thread(
        target=_import_yielding, args=((*MODULES, *extra), own_nice), name="spotray-preload-imports"
    )
    importer.start()
    importer.join()
    _ready_at = time.time()
    threading.Thread(target=_note_when_taken, name="spotray-preload", daemon=True).start()


def _import_yielding(names: tuple[str, ...], own_nice: int) -> None:
    """Import `names` on this thread at `IMPORT_NICE`: a spare imports while the training it
    stands by for runs beside it (on the same node, and on the same cores where nodes share a
    machine), and must not slow it. Threads a module starts inherit the low priority; they
    get the process's (`own_nice`) back where the OS lets a process raise it (root,
    CAP_SYS_NICE). Only on Linux, where a priority can be a thread's alone."""
    yielding = sys.platform.startswith("linux")
    own = threading.get_native_id()
    before = _threads() if yielding else set()
    if yielding:
        try:
            os.setpriority(os.PRIO_PROCESS, own, IMPORT_NICE)  # a thread id: this thread alone
        except OSError:
            logger.debug("could not lower the imports' priority", exc_info=True)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # the training function's own import raises it, with context
            logger.warning("preloading %s failed; the training function imports it again", name, exc_info=1)
    if yielding:
        for tid in _threads() - before - {own}:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, own_nice)
            except OSError:  # gone, or not allowed: a helper thread at low priority
                logger.debug("thread %d keeps the imports' low priority", tid)


def _threads() -> set[int]:
    """This process's threads, by their Linux thread ids."""
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def _note_when_taken() -> None:
    global _taken_at
    import ray

    context = ray.get_runtime_context()
    key = _marks(context.get_job_id()) + f"{context.get_node_id()}/{os.getpid()}".encode()
    tried = said = False
    while context.get_actor_id() is None:
        if not tried and _ready_at is not None and time.time() - _ready_at > IDLE_S:  # a spare
            tried, said = True, _say(kv_put, key, str(_ready_at).encode())
        time.sleep(0.01)
    if said:  # gone before anyone reads that it was taken
        _say(kv_del, key)
    _taken_at = time.time()


def _marks(job_id: str) -> bytes:
    """The KV prefix of job `job_id`'s ready marks (READY_PREFIX's layout)."""
    return f"{READY_PREFIX}{job_id}/".encode()


def _say(write: Callable[..., None], key: bytes, *value: bytes) -> bool:
    """Put or remove the ready mark; a spare that cannot is still a spare, only not preferred."""
    from spotray.spot.watch import KV_NAMESPACE

    try:
        write(key, *value, namespace=KV_NAMESPACE)
    except Exception:
        logger.warning("could not write this spare's ready mark", exc_info=True)
        return False
    return True


def ready_spares(job_id: str) -> dict[str, int]:
    """By node id: the idle processes of Ray job `job_id` (hex) whose imports are done."""
    from spotray.spot.watch import KV_NAMESPACE

    return dict(Counter(key.decode().split("/")[2] for key in kv_keys(_marks(job_id), KV_NAMESPACE)))


def forget_ready_spares(job_id: str) -> None:
    """Remove the marks of job `job_id`'s spares: its run is over, and Ray ends them. A
    cluster that cannot be reached keeps them (a few bytes a node), the run's outcome stands."""
    from spotray.spot.watch import KV_NAMESPACE

    try:
        kv_del(_marks(job_id), KV_NAMESPACE, by_prefix=True)
    except Exception:
        logger.warning("could not remove the warm spares' ready marks", exc_info=True)


def was_spare() -> bool:
    """Whether this process waited as a warm spare, imports done, before its actor came. One
    that Ray started for an actor takes it as soon as its imports are done; a spare sits idle."""
    return _ready_at is not None and _taken_at is not None and _taken_at - _ready_at > IDLE_S


def joined_at(process_created: float) -> float:
    """When this process joined its worker group, to time the restart from: its creation when
    Ray started it for the group, the moment it was taken when it was a spare."""
    return _taken_at if was_spare() and _taken_at is not None else process_created
