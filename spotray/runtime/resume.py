"""Where a (re)started worker group resumes from, and loading it.

Rank 0 chooses the newest complete checkpoint in storage (Ray's latest registered one, or a
newer complete one that Ray never registered: see spotray.runtime.checkpoint) and every rank loads
it. A fresh start seeds every rank from (seed, 0, rank).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.collective
import torch
from ray.train import Checkpoint, CheckpointConsistencyMode, CheckpointUploadMode

from spotray.errors import CheckpointMismatchError
from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from spotray.runtime.storage import Location
from spotray.workload import Workload

logger = logging.getLogger("spotray.runtime")


@dataclass
class Progress:
    step: int = 0  # optimizer updates done
    samples: int = 0  # samples consumed
    elapsed_s: float = 0.0  # training wall time over all attempts
    loss: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Resume:
    """Where a (re)started worker group resumes from, as rank 0 decided it."""

    checkpoint: ckpt.StoredCheckpoint | None
    registered: bool  # whether Ray Train already knows this checkpoint
    removed: tuple[str, ...] = ()  # "uri: why" for folders that could never be loaded
    skipped: tuple[str, ...] = ()  # "uri: why" for complete ones that failed verification
    # Folders Ray Train already lists. A checkpoint written again into one (after a fall-back
    # past it) is not reported to Ray as a checkpoint a second time: Ray would list the folder
    # twice, and its retention, deleting the older entry, would delete the newer one's files.
    ray_lists: frozenset[str] = frozenset()


def worker_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def seed_rank(seed: int, step: int, rank: int) -> None:
    """Fresh RNG streams for this rank from (seed, step, rank)."""
    torch.manual_seed(worker_seed(seed, step, rank))
    np.random.seed(worker_seed(seed, step, rank) % 2**32)


def choose_checkpoint(run: Location, rank: int) -> Resume:
    """Agree on the checkpoint to resume from: the newest complete one in storage whose
    files match their checksums.

    Rank 0 decides and removes what can never be loaded: torn folders, and complete ones
    that Ray does not know and that are older than the one chosen, which no retention would
    ever delete. One that fails its checksums is skipped and kept (a read error looks the
    same). Every rank gets the same answer.

    The broadcast carries plain values (step, registered, folder names), not a `Resume`: Ray's
    synchronization actor is a fresh process for every worker group, and unpickling spotray's
    classes there imported torch, which made each restart 2.5-3 s slower on two cores.
    """
    resume = Resume(None, False)
    if rank == 0:
        registered = registered_paths(timeout_s=30)
        stored = ckpt.scan(run)
        newest, skipped = _newest_verified([c for c in stored if c.complete])
        removed = []
        for c in stored:
            keep = c is newest or c.unreadable or c.location.uri in skipped
            if keep or c.location.path.rstrip("/") in registered:
                continue
            why = c.problem or f"complete but never registered by Ray, older than step {newest.step}"
            logger.warning("removing checkpoint %s: %s", c.location.uri, why)
            kept = ckpt.delete(c.location)
            removed.append(f"{c.location.uri}: {why}" + (f" (kept {', '.join(kept)})" if kept else ""))
        known = newest is not None and newest.location.path.rstrip("/") in registered
        listed = frozenset(p.rsplit("/", 1)[-1] for p in registered)
        skips = tuple(f"{u}: {why}" for u, why in skipped.items())
        resume = Resume(newest, known, tuple(removed), skips, listed)
    step, known, listed = ray.train.collective.broadcast_from_rank_zero(
        (resume.checkpoint.step if resume.checkpoint else None, resume.registered, resume.ray_lists)
    )
    if rank == 0:
        return resume
    found = ckpt.inspect(run.join(ckpt.dir_name(step)), step) if step is not None else None
    return Resume(found, known, ray_lists=listed)


def registered_paths(timeout_s: float) -> set[str]:
    """The storage paths of the checkpoints Ray Train has registered for this run, once it
    has processed the reports in flight (their uploads); raises if that takes `timeout_s`."""
    return {
        c.checkpoint.path.rstrip("/")
        for c in ray.train.get_all_reported_checkpoints(
            consistency_mode=CheckpointConsistencyMode.COMMITTED, timeout_s=timeout_s
        )
    }


def _newest_verified(
    complete: list[ckpt.StoredCheckpoint],
) -> tuple[ckpt.StoredCheckpoint | None, dict[str, str]]:
    """The newest checkpoint whose files match their checksums, and why newer ones did not."""
    skipped: dict[str, str] = {}
    for c in reversed(complete):
        try:
            why = ckpt.verify(c)
        except (OSError, ValueError, KeyError, TypeError) as err:
            why = f"unreadable: {err}"
        if why is None:
            return c, skipped
        logger.warning("skipping checkpoint %s: %s", c.location.uri, why)
        skipped[c.location.uri] = why
    return None, skipped


def check_model(meta: dict[str, Any], model: torch.nn.Module, where: str) -> None:
    """The checkpoint holds this model's tensors, shape for shape; otherwise one clear line."""
    from spotray.workload import model_shapes

    problem = shape_difference(meta, model_shapes(model))
    if problem:
        raise CheckpointMismatchError(f"checkpoint {where} {problem}: use another run name or --fresh")


def shape_difference(meta: dict[str, Any], shapes: dict[str, list[int]]) -> str | None:
    """How a checkpoint's model differs from `shapes` (state_dict key -> shape), or None."""
    if meta.get("format") != ckpt.FORMAT_VERSION:
        return (
            f"was written by another spotray (checkpoint format {meta.get('format')}, "
            f"this one reads {ckpt.FORMAT_VERSION})"
        )
    saved = (meta.get("model") or {}).get("shapes", {})
    missing = sorted(set(shapes) - set(saved))
    extra = sorted(set(saved) - set(shapes))
    changed = [
        f"{k} {saved[k]} -> {shapes[k]}" for k in sorted(set(saved) & set(shapes)) if saved[k] != shapes[k]
    ]
    parts = []
    if changed:
        parts.append("has other shapes: " + ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else ""))
    if missing:
        parts.append("lacks " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
    if extra:
        parts.append(
            "has tensors the model lacks: " + ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
        )
    return "holds another model (" + "; ".join(parts) + ")" if parts else None


def restore(
    decision: Resume,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    workload: Workload,
    seed: int,
    world: int,
    rank: int,
    device: torch.device,
    group: Any,
    cache: Path,
) -> Progress:
    """Load the chosen checkpoint (or seed a fresh start); returns where training stands.

    A collective: every rank loads its part of the tensors over `group`, resharded when the
    checkpoint was written by another world size or strategy. `cache` holds a local copy of
    a checkpoint that is not on local storage."""
    from spotray.runtime.optim import apply_current_lr

    resume = decision.checkpoint
    if resume is None:
        seed_rank(seed, 0, rank)
        return Progress()
    check_model(resume.meta or {}, model, resume.location.uri)
    peaks = [g["initial_lr"] for g in optimizer.param_groups]  # from the current config
    folder = ckpt.local_folder(resume.location, cache)
    state = torch.load(folder / tensors.TRAINER_FILE, map_location=device, weights_only=True)
    tensors.restore_training_state(model, optimizer, folder, state["rest"], group)
    scheduler.load_state_dict(state["scheduler"])
    apply_current_lr(optimizer, scheduler, peaks)
    workload.load_state_dict(state["workload"])
    progress = Progress(**state["progress"])
    if state["world_size"] == world:
        ckpt.set_rng_state(ckpt.load_file(resume.location, ckpt.rng_file(rank)))
    else:  # other ranks, other streams
        seed_rank(seed, progress.step, rank)
    if not decision.registered:
        # Written whole but never registered by Ray (see spotray.runtime.checkpoint): register it
        # in place, so Ray's retention and get_checkpoint() know it from now on.
        ray.train.report(
            {"step": progress.step, "loss": progress.loss},
            checkpoint=Checkpoint(resume.location.path, filesystem=resume.location.fs),
            checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
        )
    return progress
