"""Warm a new Ray Train worker process: torch and `torch._dynamo` import while Ray sets it up.

A restart is mostly new Python processes importing Ray, torch and, at the first
`torch.optim` construction, `torch._dynamo` (`torch.optim` wraps its methods in
`torch._disable_dynamo`, which imports it on first call). In a new worker those imports
run one after another: Ray Train's worker set-up (actor, process group) first, then the
training function. `start` is the worker's process setup hook: it imports them on a
background thread from the moment the process exists, while the main thread spends
much of its set-up waiting on Ray (the actor's creation, the other workers). Measured on
this repository's 2-core machine (BENCHMARKS.md): the first `AdamW` went from ~4 s to
nothing, and a 1 -> 2 worker growth from 27-29 s to 26 s.

Python's per-module import locks make the two threads' imports safe: a module that both
want is imported once, the second waits for it. The thread only imports; nothing else.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("spotray.warm")

MODULES = ("torch", "torch._dynamo")


def start() -> None:
    """The process setup hook (`RunConfig.worker_runtime_env`, see spotray.trainer)."""
    threading.Thread(target=_import, name="spotray-warm", daemon=True).start()


def _import() -> None:
    import importlib

    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # the training function imports it again and reports the error
            logger.warning("warming: could not import %s", name, exc_info=True)
            return
