"""The per-worker training loop that Ray Train runs on every rank.

One optimizer step per iteration: the rank's slice of the step's global batch in
micro-batches (DDP syncs on the last one), one all-reduce of a few scalars that carries the
global loss and the checkpoint votes, then the update. Checkpoints are snapshotted to CPU
memory on the training thread, written to local staging in the background, and handed to
`ray.train.report(..., ASYNC)` at the first step where every rank's write is finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray.train
import ray.train.collective
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConsistencyMode, CheckpointUploadMode

from spotray import checkpoint as ckpt
from spotray import preemption
from spotray.config import JobConfig, OptimizerSection
from spotray.errors import CheckpointMismatchError
from spotray.interval import Observation, policy_for
from spotray.storage import Location, resolve
from train.batches import BatchOrder
from train.data import Tokens, load_tokens
from train.model import GPT

logger = logging.getLogger("spotray.loop")


def load_job_tokens(cfg: JobConfig) -> Tokens:
    """The job's token stream; Parquet sources are read through spotray's storage layer."""
    if not cfg.data.is_parquet:
        return load_tokens(cfg.data.source)
    loc = resolve(cfg.data.source, cfg.s3)
    return load_tokens(cfg.data.source, loc.fs, loc.path)


def lr_factor(opt: OptimizerSection, step: int) -> float:
    """LR multiplier after `step` updates: linear warmup, then cosine from lr to min_lr."""
    if step < opt.warmup_steps:
        return (step + 1) / (opt.warmup_steps + 1)
    progress = min(1.0, (step - opt.warmup_steps) / max(1, opt.steps - opt.warmup_steps))
    floor = opt.min_lr / opt.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, opt: OptimizerSection) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's grouping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": opt.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), foreach=True)


@dataclass
class Progress:
    step: int = 0  # optimizer updates done
    samples: int = 0  # sequences consumed
    elapsed_s: float = 0.0  # training wall time over all attempts
    loss: float = float("nan")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's precision: bf16 autocast (fp32 weights and optimizer state) on GPUs
    that have it when `auto`; fp32 on CPU, where bf16 is slower and resumes must be bit-exact.
    Decided once per run: the context can be entered again after each exit (not nested)."""
    bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _worker_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


@dataclass(frozen=True)
class Resume:
    """Where a (re)started worker group resumes from, as rank 0 decided it."""

    checkpoint: ckpt.StoredCheckpoint | None
    registered: bool  # whether Ray Train already knows this checkpoint
    removed: tuple[str, ...] = ()  # "uri: why" for folders that could never be loaded


def choose_checkpoint(run: Location, rank: int) -> Resume:
    """Agree on the checkpoint to resume from: the newest complete one in storage.

    Rank 0 decides (Ray's latest registered checkpoint, or a newer complete one that Ray never
    registered) and removes what can never be loaded: torn folders, and complete ones that
    Ray does not know and that are older than the one chosen, which no retention would ever
    delete. Every rank gets the same answer.

    The broadcast carries plain values (step, registered), not a `Resume`: Ray's
    synchronization actor is a fresh process for every worker group, and unpickling spotray's
    classes there imported torch, which made each restart 2.5-3 s slower on two cores.
    """
    resume = Resume(None, False)
    if rank == 0:
        registered = {
            c.checkpoint.path.rstrip("/")
            for c in ray.train.get_all_reported_checkpoints(
                consistency_mode=CheckpointConsistencyMode.COMMITTED, timeout_s=30
            )
        }
        stored = ckpt.scan(run)
        complete = [c for c in stored if c.complete]
        newest = complete[-1] if complete else None
        removed = []
        for c in stored:
            if c is newest or c.location.path.rstrip("/") in registered:
                continue
            why = c.problem or f"complete but never registered by Ray, older than step {newest.step}"
            logger.warning("removing checkpoint %s: %s", c.location.uri, why)
            ckpt.delete(c.location)
            removed.append(f"{c.location.uri}: {why}")
        known = newest is not None and newest.location.path.rstrip("/") in registered
        resume = Resume(newest, known, tuple(removed))
    step, known = ray.train.collective.broadcast_from_rank_zero(
        (resume.checkpoint.step if resume.checkpoint else None, resume.registered)
    )
    if rank == 0 or step is None:
        return resume
    return Resume(ckpt.inspect(run.join(ckpt.dir_name(step)), step), known)


def restore(
    decision: Resume,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    seed: int,
    world: int,
    rank: int,
    device: torch.device,
) -> Progress:
    """Load the chosen checkpoint (or seed a fresh start); returns where training stands."""
    resume = decision.checkpoint
    if resume is None:
        torch.manual_seed(_worker_seed(seed, 0, rank))
        np.random.seed(_worker_seed(seed, 0, rank) % 2**32)
        return Progress()
    check_shape(resume.meta or {}, model, resume.location.uri)
    state = ckpt.load_file(resume.location, ckpt.STATE_FILE, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    progress = Progress(**state["progress"])
    if state["world_size"] == world:
        ckpt.set_rng_state(ckpt.load_file(resume.location, ckpt.rng_file(rank)))
    else:  # other ranks, other streams: reseed from (seed, step, rank)
        torch.manual_seed(_worker_seed(seed, progress.step, rank))
        np.random.seed(_worker_seed(seed, progress.step, rank) % 2**32)
    if not decision.registered:
        # Written whole but never registered by Ray (see spotray.checkpoint): register it
        # in place, so Ray's retention and get_checkpoint() know it from now on.
        ray.train.report(
            {"step": progress.step, "loss": progress.loss},
            checkpoint=Checkpoint(resume.location.path, filesystem=resume.location.fs),
            checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
        )
    return progress


def check_shape(meta: dict[str, Any], model: GPT, where: str) -> None:
    saved = meta.get("model")
    if saved != model.cfg.as_dict():
        raise CheckpointMismatchError(
            f"checkpoint {where} holds a model of shape {saved}, the config asks for "
            f"{model.cfg.as_dict()}: use another run name or --fresh"
        )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg = JobConfig.model_validate(loop_config["config"])
    run: Location = loop_config["run"]
    stop_step: int = loop_config["stop_step"]
    hub = loop_config.get("hub")
    progress_every_s: float = loop_config.get("progress_every_s", 0.5)

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    nodes = max(1, world // max(1, ctx.get_local_world_size()))
    device = ray.train.torch.get_device()
    distributed = dist.is_available() and dist.is_initialized()
    opt_cfg = cfg.optimizer
    batch = opt_cfg.global_batch_size

    tokens = load_job_tokens(cfg)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = GPT(cfg.model.gpt_config(tokens.vocab_size)).to(device)
    optimizer = make_optimizer(model, opt_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(opt_cfg, s))

    decision = choose_checkpoint(run, rank)
    progress = restore(decision, model, optimizer, scheduler, cfg.seed, world, rank, device)
    resume = decision.checkpoint

    ddp = ray.train.torch.prepare_model(model)
    amp = autocast(device, cfg.model.precision)
    order = BatchOrder(tokens.ids, model.cfg.block_size, batch, cfg.seed)
    staging = Path(tempfile.gettempdir()) / "spotray-staging" / cfg.name / f"rank{rank}"
    writer = ckpt.CheckpointWriter(staging, rank)
    policy = policy_for(cfg.checkpoint.interval, cfg.checkpoint.prior_mtbf_hours)
    failures, exposure_s = _failures(hub)
    next_due = progress.step + policy.next_interval(None)
    step_s, last_stall, last_commit, last_push, last_poll = 0.0, 0.0, 0.0, 0.0, 0.0
    plan = preemption.PreemptionPlan()
    born = psutil.Process().create_time()  # this worker process: the restart began about then
    # Requests from before this worker process are covered by the restore. One made while it
    # started is not: a growth is weighed as soon as Ray Train reports the group started,
    # before this loop runs (measured: a request 40 ms after the start, ignored, cost the
    # growth the policy's 60 s wait and the steps since the last periodic checkpoint).
    request_seen = born
    answering: float | None = None  # a request that the next checkpoint answers (rank 0)
    attempt_start = time.perf_counter()
    elapsed_base = progress.elapsed_s
    restart_s: float | None = None  # from `born` to this start's first step

    if rank == 0 and hub is not None:
        hub.push.remote(
            {
                "kind": "start",
                "step": progress.step,
                "world_size": world,
                "nodes": nodes,
                "resumed_from": resume.location.uri if resume else None,
                "recovered_unregistered": resume is not None and not decision.registered,
                "removed": list(decision.removed),
                "pid": os.getpid(),
            }
        )

    def commit(pending: ckpt.PendingCheckpoint) -> None:
        nonlocal last_commit
        ray.train.report(
            pending.metrics,
            checkpoint=Checkpoint.from_directory(str(pending.folder)),
            checkpoint_dir_name=pending.folder.name,
            checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
        )
        last_commit = pending.write_s
        if rank == 0 and hub is not None:
            hub.push.remote(
                {
                    "kind": "checkpoint",
                    "step": pending.step,
                    "path": run.join(pending.folder.name).uri,
                    "stall_s": pending.stall_s,
                    "write_s": pending.write_s,
                }
            )

    # A bigger model's pace: S s a step on the job's full size, and, as the global batch is
    # fixed, S * full / world on fewer workers.
    slow_step_s = float(os.environ.get(ckpt.SLOW_STEP_ENV) or 0) * cfg.scaling.max_workers / world
    while progress.step < stop_step:
        t0 = time.perf_counter()
        step = progress.step + 1
        ddp.train()
        micro = order.micro_batches(step, rank, world, opt_cfg.micro_batch_size)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i, (x, y) in enumerate(micro):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = i == len(micro) - 1 or not hasattr(ddp, "no_sync")
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with amp:
                    _, loss = ddp(x, y)
                # Scaled so that DDP's mean over ranks is the mean over the global batch,
                # whatever the world size and however unevenly the batch divides.
                (loss * (len(x) * world / batch)).backward()
            loss_sum += loss.detach().double() * len(x)

        # One all-reduce carries the loss and every decision that must be unanimous; rank 0
        # votes on timing so that all ranks act at the same step.
        now = time.time()
        vote_poll = rank == 0 and preemption.poll_due(now - last_poll, step_s)
        asked_at = (_checkpoint_request_time() or 0.0) if vote_poll else 0.0
        requested = asked_at > request_seen
        if requested:  # a rebalance hint, a growth or a move back to spot: checkpoint now
            request_seen = now
            answering = asked_at
        vote_due = rank == 0 and (step >= next_due or step == stop_step)
        vote_final = rank == 0 and plan.wants_final(now * 1000, step_s, last_commit)
        if vote_poll:
            last_poll = now
        ready = float(writer.pending is None or writer.pending.done())
        stats = torch.tensor(
            [0.0, ready, vote_due, vote_poll, vote_final, requested], dtype=torch.float64, device=device
        )
        stats[0] = loss_sum
        if distributed:
            dist.all_reduce(stats)
        loss_value = stats[0].item() / batch
        all_ready, due, poll, final, asked = (
            stats[1].item() == world,
            stats[2].item() > 0,
            stats[3].item() > 0,
            stats[4].item() > 0,
            stats[5].item() > 0,
        )
        # A requested checkpoint is handed over at once: the move that asked for it (a
        # growth, a move back to spot) waits on it, and every step after it is redone.
        urgent = final or asked
        if poll:
            info = ray.train.get_preemption_info()  # a collective: every rank asks at this step
            if plan.notice(info):
                urgent = True
                if rank == 0 and hub is not None:
                    hub.push.remote(
                        {
                            "kind": "notice",
                            "step": step,
                            "deadline_ms": plan.deadline_ms,
                            "nodes": sorted(info.preempted_node_to_ranks),
                            # a write in flight is finished and committed first (below)
                            "writing": writer.pending is not None and not writer.pending.done(),
                        }
                    )
        if final:
            plan.final_saved = True

        if opt_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), opt_cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if slow_step_s:
            time.sleep(max(0.0, slow_step_s - (time.perf_counter() - t0)))

        dt = time.perf_counter() - t0
        step_s = dt if step_s == 0 else 0.9 * step_s + 0.1 * dt
        if restart_s is None:
            restart_s = time.time() - born
        progress = Progress(
            step=step,
            samples=progress.samples + batch,
            elapsed_s=elapsed_base + time.perf_counter() - attempt_start,
            loss=loss_value,
        )

        if writer.pending is not None and (all_ready or due or urgent):
            commit(writer.wait())
        if due or urgent:
            # What spotray's policy weighs a growth with (spotray.growth.Pace).
            pace = dict(step_s=step_s, world_size=world, steps_left=stop_step - step, restart_s=restart_s)
            last_stall = _start_checkpoint(
                writer, model, optimizer, scheduler, progress, cfg, world, rank, answering, pace
            )
            answering = None
            if urgent:  # a node is going, or a move waits: write and hand it over now
                commit(writer.wait())
            obs = Observation(
                step_s=step_s,
                stall_s=last_stall,
                commit_s=last_commit,
                failures=failures,
                node_seconds=exposure_s + nodes * (time.perf_counter() - attempt_start),
                nodes=nodes,
            )
            next_due = step + policy.next_interval(obs)

        if (
            rank == 0
            and hub is not None
            and (time.perf_counter() - last_push >= progress_every_s or step == stop_step)
        ):
            last_push = time.perf_counter()
            hub.push.remote(
                {
                    "kind": "step",
                    "step": step,
                    "loss": loss_value,
                    "world_size": world,
                    "tokens_per_s": batch * model.cfg.block_size / dt,
                    "lr": scheduler.get_last_lr()[0],
                }
            )
        hold_until = plan.holding_until_ms()
        if hold_until is not None:
            _hold(hold_until, rank, hub, step)

    if writer.pending is not None:
        commit(writer.wait())


def _checkpoint_request_time() -> float | None:
    """When `spotray watch` last asked for a checkpoint (a rebalance hint), if it did."""
    from ray.experimental import internal_kv

    from spotray.watch import CHECKPOINT_REQUEST_KEY, KV_NAMESPACE

    body = internal_kv._internal_kv_get(CHECKPOINT_REQUEST_KEY, namespace=KV_NAMESPACE)
    return json.loads(body)["time"] if body is not None else None


def _hold(until_ms: float, rank: int, hub: Any, step: int) -> None:
    """Take no further step: the node is about to go and the last checkpoint is written.

    Ray Train ends the worker group when the node goes or the deadline passes; if neither
    happens by `until_ms` the node stayed after all, and training goes on.
    """
    if rank == 0 and hub is not None:
        hub.push.remote({"kind": "hold", "step": step})
    logger.warning("holding at step %d until the preempted node is gone", step)
    while time.time() * 1000 < until_ms:
        time.sleep(0.2)
    logger.warning(
        "the preempted node is still here %.0f s past its deadline: training on", preemption.HOLD_GRACE_S
    )


def _failures(hub: Any) -> tuple[int, float]:
    """Restarts this run has seen and node-seconds it has been exposed, from the driver."""
    if hub is None:
        return 0, 0.0
    return ray.get(hub.failure_record.remote())


def _start_checkpoint(
    writer: ckpt.CheckpointWriter,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
    cfg: JobConfig,
    world: int,
    rank: int,
    answering: float | None = None,
    pace: dict[str, Any] | None = None,
) -> float:
    """Snapshot this rank's state and start writing it; returns the seconds it stalled.

    `answering`: the time of the checkpoint request (spotray.watch's key) this checkpoint
    answers, reported with it so that whoever asked sees when it is committed. `pace`:
    more metrics to report with it.
    """
    t0 = time.perf_counter()
    files: dict[str, Any] = {ckpt.rng_file(rank): ckpt.rng_state()}
    meta = None
    if rank == 0:  # model and optimizer are replicas under DDP: one copy is enough
        files[ckpt.STATE_FILE] = {
            "model": writer.buffers.copy(model.state_dict(), "model"),
            "optimizer": writer.buffers.copy(optimizer.state_dict(), "optimizer"),
            "scheduler": scheduler.state_dict(),
            "progress": progress.__dict__.copy(),
            "world_size": world,
            "model_config": model.cfg.as_dict(),
            "config_digest": cfg.digest(),
        }
        meta = {
            "format": ckpt.FORMAT_VERSION,
            "run": cfg.name,
            "step": progress.step,
            "samples": progress.samples,
            "world_size": world,
            "loss": progress.loss,
            "wall_time_s": round(progress.elapsed_s, 3),
            "unix_time": time.time(),
            "model": model.cfg.as_dict(),
            "config_digest": cfg.digest(),
            "trajectory": cfg.trajectory(),
        }
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    stall = time.perf_counter() - t0
    metrics = {"step": progress.step, "loss": progress.loss, "samples": progress.samples, **(pace or {})}
    if answering is not None:
        metrics["answers_request"] = answering
    writer.start(progress.step, files, meta, stall, metrics)
    return stall
