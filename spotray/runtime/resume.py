"""Where a (re)started worker group resumes from, and loading it.

Rank 0 lists the complete checkpoints in storage (Ray's registered ones, and newer complete
ones that Ray never registered: see spotray.runtime.checkpoint); every rank loads the newest
whose files it reads match their checksums. A fresh start seeds every rank from
(seed, 0, rank).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConsistencyMode, CheckpointUploadMode

from spotray.errors import CheckpointMismatchError
from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from spotray.runtime.storage import Location
from spotray.workload import Workload, model_shapes

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
class Trainee:
    """What a checkpoint saves besides counters and RNG: the model (bare under DDP, sharded
    under FSDP), its optimizer and schedule, and the workload's own state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    workload: Workload

    @cached_property
    def model_description(self) -> dict[str, Any]:
        """Parameter count and tensor shapes for spotray.json: fixed for the run, so worked
        out once, not in every checkpoint's stall."""
        return {
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "shapes": model_shapes(self.model),
        }


@dataclass(frozen=True)
class LoadArgs:
    """What loading a checkpoint takes on this rank."""

    trainee: Trainee
    seed: int
    world: int
    rank: int
    device: torch.device
    group: Any  # the gloo group of DCP and of the ranks' agreement; None on one worker
    cache: Path  # for this rank's copy of what it reads of a checkpoint not on local storage


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


def resume(run: Location, args: LoadArgs) -> tuple[Resume, Progress]:
    """Load the newest complete checkpoint in storage whose files match their checksums (or
    seed a fresh start); returns what was resumed and where training stands.

    A collective. Rank 0 lists the complete checkpoints; every rank checks the files it
    loads as it reads them, and a checkpoint any rank finds damaged is skipped by all for
    the one before it (and kept: a read error looks the same). Rank 0 then removes what can
    never be loaded: torn folders, and complete ones that Ray does not know and that are
    older than the one loaded, which no retention would ever delete.

    Rank 0's list reaches the others over the ranks' own gloo group (`_from_rank_zero`).
    """
    stored: list[ckpt.StoredCheckpoint] = []
    registered: set[str] = set()
    if args.rank == 0:
        registered = registered_paths(timeout_s=30)
        stored = ckpt.scan(run)
    steps, listed = _from_rank_zero(
        (
            [c.step for c in reversed(stored) if c.complete],
            frozenset(p.rsplit("/", 1)[-1] for p in registered),
        ),
        args.group,
    )
    found = {c.step: c for c in stored}
    skipped: dict[str, str] = {}
    for step in steps:
        candidate = found.get(step) or ckpt.inspect(run.join(ckpt.dir_name(step)), step)
        try:
            progress = restore(candidate, args)
        except ckpt.FileCheckError as err:
            if args.rank == 0:
                logger.warning("skipping checkpoint %s: %s", candidate.location.uri, err)
            skipped[candidate.location.uri] = str(err)
            continue
        known = ckpt.dir_name(step) in listed
        if not known:
            # Written whole but never registered by Ray (see spotray.runtime.checkpoint):
            # register it in place, so Ray's retention and get_checkpoint() know it from now on.
            ray.train.report(
                {"step": progress.step, "loss": progress.loss},
                checkpoint=Checkpoint(candidate.location.path, filesystem=candidate.location.fs),
                checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
            )
        removed = _remove_unloadable(stored, candidate, skipped, registered)
        return Resume(candidate, known, removed, _lines(skipped), listed), progress
    seed_rank(args.seed, 0, args.rank)
    removed = _remove_unloadable(stored, None, skipped, registered)
    return Resume(None, False, removed, _lines(skipped), listed), Progress()


def _from_rank_zero(value: Any, group: Any) -> Any:
    """Rank 0's `value` on every rank, over the ranks' gloo group (None: one worker).

    Not Ray Train's `broadcast_from_rank_zero`: that goes through the worker group's
    synchronization actor, a new process for every group, and a restart's first broadcast
    waited for it to start (1.4-2.2 s on two cores, against 0.02-0.05 s at a first start whose
    workers took longer to start than it did)."""
    if group is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _lines(reasons: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{uri}: {why}" for uri, why in reasons.items())


def _remove_unloadable(
    stored: list[ckpt.StoredCheckpoint],
    loaded: ckpt.StoredCheckpoint | None,
    skipped: dict[str, str],
    registered: set[str],
) -> tuple[str, ...]:
    """Rank 0 (the only one with `stored`): delete the folders that can never be loaded;
    "uri: why" for each."""
    removed = []
    for c in stored:
        keep = c is loaded or c.unreadable or c.location.uri in skipped
        if keep or c.location.path.rstrip("/") in registered:
            continue
        why = c.problem or f"complete but never registered by Ray, older than step {loaded.step}"
        logger.warning("removing checkpoint %s: %s", c.location.uri, why)
        kept = ckpt.delete(c.location)
        removed.append(f"{c.location.uri}: {why}" + (f" (kept {', '.join(kept)})" if kept else ""))
    return tuple(removed)


def registered_paths(timeout_s: float) -> set[str]:
    """The storage paths of the checkpoints Ray Train has registered for this run, once it
    has processed the reports in flight (their uploads); raises if that takes `timeout_s`."""
    return {
        c.checkpoint.path.rstrip("/")
        for c in ray.train.get_all_reported_checkpoints(
            consistency_mode=CheckpointConsistencyMode.COMMITTED, timeout_s=timeout_s
        )
    }


def check_model(meta: dict[str, Any], model: torch.nn.Module, where: str) -> None:
    """The checkpoint holds this model's tensors, shape for shape; otherwise one clear line."""
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


def restore(checkpoint: ckpt.StoredCheckpoint, args: LoadArgs) -> Progress:
    """Load `checkpoint`; returns where training stands. A collective: every rank loads its
    part of the tensors over `args.group`, resharded when the checkpoint was written by
    another world size or strategy. Each rank fetches (into `args.cache`, when storage is not
    local) and checks only what it reads; ckpt.FileCheckError on every rank when any rank's
    part fails.
    """
    from spotray.runtime.optim import apply_current_lr

    trainee = args.trainee
    check_model(checkpoint.meta or {}, trainee.model, checkpoint.location.uri)
    files = ckpt.CheckedFiles(checkpoint, args.cache)
    try:
        same_world = int((checkpoint.meta or {}).get("world_size", 0)) == args.world
        # Before DCP: the files every rank reads whole. DCP's reader fetches the shards.
        whole = [tensors.TRAINER_FILE, tensors.METADATA_FILE]
        _agree(_problem(files, whole + ([ckpt.rng_file(args.rank)] if same_world else [])), args.group)
        state = torch.load(files.get(tensors.TRAINER_FILE), map_location=args.device, weights_only=True)
        peaks = [g["initial_lr"] for g in trainee.optimizer.param_groups]  # from the current config
        tensors.restore_training_state(
            trainee.model, trainee.optimizer, files.folder, state["rest"], args.group, files.get
        )
        trainee.scheduler.load_state_dict(state["scheduler"])
        apply_current_lr(trainee.optimizer, trainee.scheduler, peaks)
        trainee.workload.load_state_dict(state["workload"])
        progress = Progress(**state["progress"])
        if same_world:
            ckpt.set_rng_state(torch.load(files.get(ckpt.rng_file(args.rank)), weights_only=True))
        else:  # other ranks, other streams
            seed_rank(args.seed, progress.step, args.rank)
    finally:
        files.drop()
    return progress


def _problem(files: ckpt.CheckedFiles, names: list[str]) -> str | None:
    """Why one of `names` must not be loaded, or None (each fetched and checked)."""
    try:
        for name in names:
            files.get(name)
    except ckpt.FileCheckError as err:
        return str(err)
    return None


def _agree(problem: str | None, group: Any) -> None:
    """Raise ckpt.FileCheckError on every rank when any rank has a problem (the first
    rank's, by rank)."""
    first = first_of_ranks(problem, group)
    if first is not None:
        raise ckpt.FileCheckError(first)


def first_of_ranks(value: Any, group: Any) -> Any:
    """The lowest rank's `value` that is not None (None where no rank has one), the same on
    every rank: a collective over `group` (None: one worker)."""
    values = [value]
    if group is not None:
        values = [None] * dist.get_world_size(group)
        dist.all_gather_object(values, value, group=group)
    return next((v for v in values if v is not None), None)
