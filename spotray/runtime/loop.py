"""The per-worker training loop that Ray Train runs on every rank, for any workload.

`Worker` reads top to bottom: set-up (workload, model, FSDP shards or a DDP replica,
optimizer, schedule), resume, then `train`, whose loop names each part of a step: the
rank's slice of the global batch in micro-batches (gradients sync on the last), one
all-reduce of a few scalars that carries the global loss and every decision that must be
unanimous (checkpoint due, poll for notices, last checkpoint before a deadline, a request),
the update, the checkpoint decision, the progress line, and the hold before a preempted
node goes.

Checkpoints are snapshotted to CPU memory on the training thread, written to local staging
in the background, and handed to `ray.train.report(..., ASYNC)` at the first step where
every rank's write is finished.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import psutil
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointUploadMode

from spotray.config import JobConfig
from spotray.elastic.interval import Observation, policy_for
from spotray.ray_compat.train import persist_checkpoint, quiet_expected_errors, signalled_preemption
from spotray.ray_compat.workers import current_runtime_env
from spotray.runtime import checkpoint as ckpt
from spotray.runtime import messages as msg
from spotray.runtime import preemption, preload, strategy, tensors
from spotray.runtime.optim import autocast, default_optimizer, schedule, uses_bf16
from spotray.runtime.order import GlobalOrder, micro_batches, to_device
from spotray.runtime.resume import LoadArgs, Progress, Trainee, first_of_ranks, registered_paths, resume
from spotray.runtime.storage import Location, export_s3_env
from spotray.workload import Workload, load

logger = logging.getLogger("spotray.runtime")


@dataclass(frozen=True)
class LoopArgs:
    """What the driver hands every worker group (Ray Train's `train_loop_config`)."""

    config: dict[str, Any]  # the JobConfig, as JSON-able data
    run: Location
    stop_step: int
    hub: Any  # the driver's ProgressHub actor, or None
    launch_dir: str  # where `spotray train` runs: the workload imports from there
    progress_every_s: float = 0.5
    # End the group ahead of a preemption's deadline (preemption.NodeLeaving): only where the
    # trainer's failure policy counts that as the preemption, not against max_failures.
    hand_over: bool = False


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's training function: set up, resume, train to the stop step (module doc)."""
    entered = time.time()
    pin_threads()
    quiet_expected_errors(preemption.NodeLeaving)  # the hand-over is not a crash
    Worker(loop_config["args"], entered).train()


@dataclass(frozen=True)
class Agreed:
    """What one step's all-reduce settled, the same on every rank."""

    loss: float  # the global batch's mean loss
    all_ready: bool  # every rank's checkpoint write (if any) is finished
    due: bool  # the periodic checkpoint, or the last step
    urgent: bool  # a checkpoint now: the last before a deadline, a request, a notice


class Worker:
    """One rank of one worker group, from set-up to its last step. The fields are what the
    steps share; each method is one part of a step, in the order `train` runs them."""

    def __init__(self, args: LoopArgs, entered: float) -> None:
        self.args = args
        self.entered = entered
        self.cfg = cfg = JobConfig.model_validate(args.config)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.nodes = max(1, self.world // max(1, ctx.get_local_world_size()))
        self.device = ray.train.torch.get_device()
        self.distributed = dist.is_available() and dist.is_initialized()
        self.batch = cfg.optimizer.global_batch_size
        self._set_up()
        self._resume()
        self._prepare_steps()

    def _set_up(self) -> None:
        """The workload as the driver checked it, the model from the config's seed, sharded
        before the optimizer is built so that its state is sharded too."""
        cfg, args = self.cfg, self.args
        if os.path.isdir(args.launch_dir):  # relative paths in workload.args mean what they did there
            os.chdir(args.launch_dir)
        export_s3_env(cfg.s3)
        self.workload = load(cfg.workload.entrypoint, cfg.workload.args, args.launch_dir)
        self.fsdp = cfg.scaling.strategy == "fsdp"
        self.bf16 = uses_bf16(self.device, cfg.runtime.precision)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = self.workload.build_model()
        if self.fsdp:
            strategy.shard(self.model, self.workload, self.bf16, self.device)
        else:
            self.model = self.model.to(self.device)
        fused = (
            self.device.type == "cuda" and not self.fsdp
        )  # fused AdamW over DTensors is left to FSDP users
        self.optimizer = self.workload.build_optimizer(self.model.parameters()) or default_optimizer(
            self.model, cfg.optimizer, fused
        )
        self.scheduler = schedule(self.optimizer, cfg.optimizer)
        self.trainee = Trainee(self.model, self.optimizer, self.scheduler, self.workload)
        # DCP's collectives get a gloo group of their own: they run on the writer's thread.
        self.group = dist.new_group(backend="gloo") if self.distributed else None
        self.staging = staging_dir(args.run, self.rank)

    def _resume(self) -> None:
        """The newest complete checkpoint in storage, or a fresh start."""
        load = LoadArgs(
            self.trainee,
            self.cfg.seed,
            self.world,
            self.rank,
            self.device,
            self.group,
            cache=self.staging.with_name(f"restore-rank{self.rank}"),
        )
        self.decision, self.progress = resume(self.args.run, load)

    def _prepare_steps(self) -> None:
        """The model as the steps run it, the batch order, the checkpoint writer and interval,
        and the counters the steps keep."""
        cfg, args = self.cfg, self.args
        self.wrapped = strategy.wrap(self.model, cfg.scaling.strategy)
        if cfg.runtime.compile:  # parameters stay `model`'s: checkpoints are the same either way
            self.wrapped = torch.compile(self.wrapped)
        self.warming = cfg.runtime.compile  # this start's first step compiles
        self.amp = autocast(self.device, self.bf16 and not self.fsdp)  # FSDP's policy casts instead
        self.order = GlobalOrder(self.workload.num_samples(), self.batch, cfg.seed)
        self.tokens = self.workload.tokens_per_sample()
        self.writer = ckpt.CheckpointWriter(self.staging, self.rank, self.group)
        self.policy = policy_for(cfg.checkpoint.interval, cfg.checkpoint.prior_mtbf_hours)
        self.failures, self.exposure_s = _failures(args.hub)
        self.next_due = self.progress.step + self.policy.next_interval(None)
        self.step_s = 0.0  # seconds a step lately (a moving average)
        self.last_stall, self.last_write, self.last_push, self.last_poll = 0.0, 0.0, 0.0, 0.0
        self.uploads = Uploads()
        self.snapshot_wait = 0.0  # the training thread's waits for snapshots since the last checkpoint
        self.plan = preemption.PreemptionPlan()
        self.born = preload.joined_at(psutil.Process().create_time())  # the restart began about then
        # Requests from before the checkpoint resumed from were answered by it, and those from
        # before this worker process were the group before's. One made while it started is
        # not: a growth is weighed as soon as Ray Train reports the group started, before this
        # loop runs (measured: a request 40 ms after the start, ignored, cost the growth the
        # policy's 60 s wait and the steps since the last periodic checkpoint). A warm spare
        # can be older than the request its own resume answered (without the first rule a
        # move back to spot wrote its checkpoint twice).
        resumed = self.decision.checkpoint
        taken = ((resumed and resumed.meta) or {}).get("unix_time", 0.0)
        self.request_seen = max(self.born, taken)
        self.answering: float | None = None  # a request that the next checkpoint answers (rank 0)
        self.attempt_start = time.perf_counter()
        self.elapsed_base = self.progress.elapsed_s
        self.restart_s: float | None = None  # from `born` to this start's first step
        self.evaluation: dict[str, float] = {}
        # A bigger model's pace: S s a step on the job's full size, and, as the global batch
        # is fixed, S * full / world on fewer workers.
        slow = float(os.environ.get(ckpt.SLOW_STEP_ENV) or 0)
        self.slow_step_s = slow * cfg.scaling.max_workers / self.world

    def tell(self, event: msg.Event) -> None:
        """An event for the driver's progress hub (rank 0 speaks for the group)."""
        if self.rank == 0 and self.args.hub is not None:
            self.args.hub.push.remote(event)

    def train(self) -> None:
        """Announce the start, then train step by step to the stop step."""
        self._started()
        while self.progress.step < self.args.stop_step:
            t0 = time.perf_counter()
            step = self.progress.step + 1
            agreed = self._agree(step, self._gradients(step))
            if not self._update(step, agreed.loss):
                return
            dt = self._timed(step, agreed.loss, t0)
            self._checkpoint(step, agreed)
            self._push(step, agreed.loss, dt)
            self._hold_if_leaving(step)
        if self.writer.pending is not None:
            self.commit(self.writer.wait())

    def _started(self) -> None:
        """Tell the driver where the group runs, what it resumed from and which ranks took
        a warm spare."""
        placement, spares = worker_nodes(self.group)  # a collective: before the rank-0 test in `tell`
        decision = self.decision
        resume = decision.checkpoint
        self.tell(
            msg.Started(
                step=self.progress.step,
                world_size=self.world,
                nodes=self.nodes,
                resumed_from=resume.location.uri if resume else None,
                recovered_unregistered=resume is not None and not decision.registered,
                removed=list(decision.removed),
                skipped=list(decision.skipped),
                pid=os.getpid(),
                born=self.born,
                entered=self.entered,
                worker_nodes=placement,
                runtime_env=current_runtime_env(),
                warm=spares,
            )
        )

    def _gradients(self, step: int) -> torch.Tensor:
        """The step's gradients: this rank's slice of the global batch, in micro-batches.
        Returns the slice's summed loss."""
        self.wrapped.train()
        micro = micro_batches(
            self.order,
            step,
            self.rank,
            self.world,
            self.cfg.optimizer.micro_batch_size,
            self.workload.sample,
            self.workload.collate,
        )
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (size, part) in enumerate(micro):
            part = to_device(part, self.device)
            with strategy.gradient_sync(self.wrapped, sync=i == len(micro) - 1):
                with self.amp:
                    loss = self.workload.loss(self.wrapped, part)
                # Scaled so that the mean over ranks is the mean over the global batch,
                # whatever the world size and however unevenly the batch divides.
                (loss * (size * self.world / self.batch)).backward()
            loss_sum += loss.detach().double() * size
        return loss_sum

    def _agree(self, step: int, loss_sum: torch.Tensor) -> Agreed:
        """One all-reduce carries the loss and every decision that must be unanimous; rank 0
        votes on the checkpoint schedule, any rank on a drain signal its worker holds and on
        the last checkpoint before a deadline, so that all ranks act at the same step."""
        rank, now = self.rank, time.time()
        timed = rank == 0 and preemption.poll_due(now - self.last_poll, self.step_s)
        request = _checkpoint_request() if timed else None
        requested = request is not None and request.time > self.request_seen
        if requested:  # a rebalance hint, a growth or a move back to spot: checkpoint now
            self.request_seen = now
            self.answering = request.time
        vote_due = rank == 0 and (step >= self.next_due or step == self.args.stop_step)
        # Every rank: each uploads its own part of a checkpoint, timed on its own (`Uploads`).
        vote_final = self.plan.wants_final(now * 1000, self.step_s, self.commit_s())
        if timed:
            self.last_poll = now
        # Any rank whose Ray Train worker holds a drain signal this plan has not taken in
        # asks for it to be agreed at this step (`agreed_preemption` reads the same copies).
        vote_poll = self.plan.is_news(signalled_preemption())
        ready = float(self.writer.pending is None or self.writer.pending.done())
        stats = torch.tensor(
            [0.0, ready, vote_due, vote_poll, vote_final, requested], dtype=torch.float64, device=self.device
        )
        stats[0] = loss_sum
        if self.distributed:
            dist.all_reduce(stats)
        poll, final, asked = stats[3].item() > 0, stats[4].item() > 0, stats[5].item() > 0
        # A requested checkpoint is handed over at once: the move that asked for it (a
        # growth, a move back to spot) waits on it, and every step after it is redone.
        urgent = final or asked
        if poll:
            info = agreed_preemption(self.distributed)  # a collective: every rank asks at this step
            if self.plan.notice(info):
                urgent = True
                pending = self.writer.pending
                self.tell(
                    msg.Noticed(
                        step=step,
                        deadline_ms=self.plan.deadline_ms,
                        nodes=sorted(info.preempted_node_to_ranks),
                        writing=pending is not None and not pending.done(),
                    )
                )
        if final:
            self.plan.final_saved = True
        return Agreed(
            loss=stats[0].item() / self.batch,
            all_ready=stats[1].item() == self.world,
            due=stats[2].item() > 0,
            urgent=urgent,
        )

    def _update(self, step: int, loss: float) -> bool:
        """The update, unless the step went wrong: then nothing of it is saved, and False
        ends the run."""
        grad_clip = self.cfg.optimizer.grad_clip
        norm = (
            strategy.total_norm(torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), grad_clip))
            if grad_clip > 0
            else None
        )
        if not math.isfinite(loss) or (norm is not None and not torch.isfinite(norm)):
            if self.writer.pending is not None:
                self.commit(self.writer.wait())
            # Every rank sees the same all-reduced loss and synchronized gradients: all stop
            # here, and the run ends cleanly (a retry would only meet the same number again).
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {float(norm)}"
            self.tell(msg.Stopped(step=step, reason=f"{what} at step {step}"))
            return False
        self.snapshot_wait += self.writer.wait_snapshot()  # the checkpoint being written reads the weights
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def _timed(self, step: int, loss: float, t0: float) -> float:
        """The step's pace and the progress it made; returns its seconds."""
        if self.slow_step_s:
            time.sleep(max(0.0, self.slow_step_s - (time.perf_counter() - t0)))
        dt = time.perf_counter() - t0
        if self.warming:  # the compile's time is reported apart, not taken for the step's pace
            self.warming = False
            self.tell(msg.WarmedUp(step=step, seconds=dt))
        else:
            self.step_s = dt if self.step_s == 0 else 0.9 * self.step_s + 0.1 * dt
        if self.restart_s is None:
            self.restart_s = time.time() - self.born
        self.progress = Progress(
            step=step,
            samples=self.progress.samples + self.batch,
            elapsed_s=self.elapsed_base + time.perf_counter() - self.attempt_start,
            loss=loss,
        )
        return dt

    def _checkpoint(self, step: int, agreed: Agreed) -> None:
        """Commit a finished write; start one when due or urgent."""
        writer, due, urgent = self.writer, agreed.due, agreed.urgent
        if writer.pending is not None and (agreed.all_ready or due or urgent):
            self.commit(writer.wait())
        if not (due or urgent):
            return
        if due and not urgent and (self.rank == 0 or self.fsdp):  # FSDP's forward takes every rank
            self.evaluation = _evaluate(self.workload, self.model)
        report = msg.CheckpointReport(
            step=step,
            loss=agreed.loss,
            samples=self.progress.samples,
            step_s=self.step_s,
            world_size=self.world,
            steps_left=self.args.stop_step - step,
            restart_s=self.restart_s,
            answers_request=self.answering,
        )
        self.last_stall = self.snapshot_wait + _start_checkpoint(
            writer, self.trainee, self.progress, self.cfg, self.world, self.rank, report, self.evaluation
        )
        self.snapshot_wait = 0.0
        self.answering = None
        if urgent:  # a node is going, or a move waits: write and hand it over now
            self.commit(writer.wait())
            self._last_before_leaving()
        obs = Observation(
            step_s=self.step_s,
            stall_s=self.last_stall,
            commit_s=self.last_write + self.uploads.last_s,
            failures=self.failures,
            node_seconds=self.exposure_s + self.nodes * (time.perf_counter() - self.attempt_start),
            nodes=self.nodes,
        )
        self.next_due = step + self.policy.next_interval(obs)

    def _last_before_leaving(self) -> None:
        """After an urgent checkpoint under a notice: when it was written only after the
        final one came due (a short lead, slow storage) and the group can restart without
        the node, it is the last; hold and hand over now. Without room one more step is a
        gain."""
        plan = self.plan
        if not (plan.noticed and not plan.final_saved and self.args.hand_over):
            return
        late = plan.wants_final(time.time() * 1000, self.step_s, self.commit_s())
        room = self.rank == 0 and _room_without_draining(self.world, self.cfg.scaling)
        votes = torch.tensor([float(late), float(room)], device=self.device)
        if self.distributed:
            dist.all_reduce(votes)
        plan.final_saved = bool(votes[0].item() > 0 and votes[1].item() > 0)  # any rank late

    def commit(self, pending: ckpt.PendingCheckpoint) -> None:
        """Hand a written checkpoint to Ray Train (its ASYNC upload) and tell the driver."""
        run = self.args.run
        staged = Checkpoint.from_directory(str(pending.folder))
        self.uploads.queued()
        if pending.folder.name in self.decision.ray_lists:  # see Resume.ray_lists: upload it here
            self.uploads.upload(staged, pending.folder.name)
            shutil.rmtree(pending.folder, ignore_errors=True)
            ray.train.report(pending.metrics)
        else:
            ray.train.report(
                pending.metrics,
                checkpoint=staged,
                checkpoint_dir_name=pending.folder.name,
                checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                checkpoint_upload_fn=self.uploads.upload,
            )
        self.last_write = pending.write_s
        self.tell(
            msg.Checkpointed(
                step=pending.step,
                path=run.join(pending.folder.name).uri,
                stall_s=pending.stall_s,
                write_s=pending.write_s,
                evaluation=pending.evaluation,
            )
        )

    def commit_s(self) -> float:
        """Seconds from starting a checkpoint now to its being in storage: a checkpoint is
        safe from a preemption only then, and on S3 the upload can take longer than the write."""
        return self.last_write + self.uploads.seconds_to_store()

    def _push(self, step: int, loss: float, dt: float) -> None:
        """The driver's progress line, every `progress_every_s` and at the last step."""
        now = time.perf_counter()
        if self.rank != 0 or (
            now - self.last_push < self.args.progress_every_s and step != self.args.stop_step
        ):
            return
        self.last_push = now
        self.tell(
            msg.Stepped(
                step=step,
                loss=loss,
                world_size=self.world,
                samples_per_s=self.batch / dt,
                tokens_per_s=self.batch * self.tokens / dt if self.tokens else None,
                lr=self.optimizer.param_groups[0]["lr"],
            )
        )

    def _hold_if_leaving(self, step: int) -> None:
        """The last checkpoint before a deadline is written: take no more steps; hand the
        group over (`_hand_over`) where it can restart without the node."""
        hold_until = self.plan.holding_until_ms()
        if hold_until is None:
            return
        self.tell(msg.Holding(step=step))
        if self.rank == 0 and self.args.hand_over:
            _hand_over(self.plan, self.args.run, step, self.world, self.cfg.scaling, self.tell)
        _hold(hold_until, step)


class Uploads:
    """Ray Train's uploads of this rank's checkpoints (its ASYNC mode, one at a time on its
    own thread), timed: how long until a checkpoint handed over now would be in storage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_s = 0.0  # the newest finished upload's seconds
        self._waiting = 0  # handed over, not yet in storage (the one uploading included)
        self._since: float | None = None  # when the one uploading began

    def queued(self) -> None:
        with self._lock:
            self._waiting += 1

    def upload(self, checkpoint: Checkpoint, dir_name: str) -> Checkpoint:
        """Ray Train's own upload (`checkpoint_upload_fn`: it runs on Ray's upload thread)."""
        started = time.perf_counter()
        with self._lock:
            self._since = started
        try:
            time.sleep(float(os.environ.get(ckpt.SLOW_UPLOAD_ENV) or 0))
            return persist_checkpoint(checkpoint, dir_name)
        finally:
            with self._lock:
                self.last_s = time.perf_counter() - started
                self._since, self._waiting = None, self._waiting - 1

    def seconds_to_store(self) -> float:
        """The uploads still ahead of a new checkpoint, then its own; each as long as the
        newest finished one, or as the one under way has taken so far, if longer."""
        with self._lock:
            running_s = 0.0 if self._since is None else time.perf_counter() - self._since
            each = max(self.last_s, running_s)
            return max(0.0, self._waiting * each - running_s) + each


def pin_threads() -> None:
    """Size torch's CPU thread pool from OMP_NUM_THREADS, as a torch imported after Ray set it
    would: Ray sets it when the actor's first task starts, after the worker's setup hook
    imported torch (`runtime.preload`), whose pool then took the machine's cores. The count
    fixes the order of float reductions: resumes stay bit-identical."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def worker_nodes(group: Any) -> tuple[list[str], list[bool]]:
    """The Ray node id of every rank, and whether its process was a warm spare, in rank
    order (a collective: every rank calls it)."""
    here = (ray.get_runtime_context().get_node_id(), preload.was_spare())
    ranks: list[Any] = [here]
    if group is not None:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, here, group=group)
    return [str(node) for node, _ in ranks], [bool(spare) for _, spare in ranks]


def agreed_preemption(distributed: bool) -> Any:
    """The drain signal that any rank's Ray Train worker holds (the lowest such rank's), the
    same on every rank: a collective over the default process group, the training thread's
    (DCP's group is the checkpoint writer's, on its own thread).

    Ray Train's `get_preemption_info()` broadcasts rank 0's copy through the worker group's
    synchronization actor, a new process for every group: a restart's first step waited for
    it to start (1.3 s in the median, two cores), and a rank that already held the signal
    got rank 0's None until rank 0 had it too."""
    return first_of_ranks(signalled_preemption(), dist.group.WORLD if distributed else None)


def staging_dir(run: Location, rank: int) -> Path:
    """This rank's local staging folder, keyed by the run's storage URI (not only its name),
    so two runs of one name in different storage never share it."""
    key = sha256(run.uri.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "spotray-staging" / key / f"rank{rank}"


def _checkpoint_request() -> msg.CheckpointRequest | None:
    """The newest "checkpoint now" (a rebalance hint, a growth, a move back to spot), if any."""
    from spotray.ray_compat.node import kv_get
    from spotray.spot.watch import KV_NAMESPACE

    body = kv_get(msg.CheckpointRequest.KEY, KV_NAMESPACE)
    return msg.CheckpointRequest.decode(body)


def _evaluate(workload: Workload, model: torch.nn.Module) -> dict[str, float]:
    """`workload.evaluate` on the bare model, without gradients, leaving every RNG as it was:
    a resumed run must draw what an uninterrupted one draws."""
    saved = ckpt.rng_state()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in (workload.evaluate(model) or {}).items()}
    finally:
        model.train(was_training)
        ckpt.set_rng_state(saved)


def _hold(until_ms: float, step: int) -> None:
    """Take no further step: the node is about to go and the last checkpoint is written.

    Ray Train ends the worker group when the node goes or the deadline passes; if neither
    happens by `until_ms` the node stayed after all, and training goes on.
    """
    logger.warning("holding at step %d until the preempted node is gone", step)
    while time.time() * 1000 < until_ms:
        time.sleep(0.2)
    logger.warning(
        "the preempted node is still here %.0f s past its deadline: training on", preemption.HOLD_GRACE_S
    )


def _room_without_draining(world: int, scaling: Any) -> bool:
    """Whether the live nodes that are not draining can host `world` workers, by their total
    resources (the group's own share comes free as it ends)."""
    from spotray.ray_compat.node import staying_nodes

    return sum(scaling.slots(n["Resources"]) for n in staying_nodes()) >= world


def _hand_over(
    plan: preemption.PreemptionPlan, run: Location, step: int, world: int, scaling: Any, tell: Any
) -> None:
    """Raise `NodeLeaving` once Ray has registered the checkpoint of `step` (whole in
    storage) and the nodes that are not draining can host `world` workers; return at the
    deadline if that never happens. Rank 0 alone: one rank's error ends the whole group."""
    folder, registered = ckpt.dir_name(step), False
    while plan.deadline_ms is not None and (left_s := plan.deadline_ms / 1000 - time.time()) > 0:
        if not registered:
            try:  # waits for the reports in flight: the checkpoint's upload
                paths = registered_paths(timeout_s=left_s)
            except Exception:  # too late to end early: hold until the deadline
                logger.warning("the checkpoint of step %d was not registered in time", step, exc_info=True)
                return
            registered = folder in {path.rsplit("/", 1)[-1] for path in paths}
            registered = registered and ckpt.inspect(run.join(folder), step).complete
        if registered and _room_without_draining(world, scaling):
            tell(msg.HandingOver(step=step, before_deadline_s=round(left_s, 2)))
            leaving = preemption.NodeLeaving(step, plan.deadline_ms, plan.nodes)
            logger.warning("%s", leaving)  # one line: Ray Train's traceback is quieted for it
            raise leaving
        time.sleep(0.2)


def _failures(hub: Any) -> tuple[int, float]:
    """Restarts this run has seen and node-seconds it has been exposed, from the driver."""
    if hub is None:
        return 0, 0.0
    return ray.get(hub.failure_record.remote())


def _start_checkpoint(
    writer: ckpt.CheckpointWriter,
    state: Trainee,
    progress: Progress,
    cfg: JobConfig,
    world: int,
    rank: int,
    report: msg.CheckpointReport,
    evaluation: dict[str, float],
) -> float:
    """Snapshot this rank's state and start writing it; returns the seconds it stalled.

    Parameters and optimizer state change only at the next optimizer step: the writer copies
    them while the next step's forward and backward run (`CheckpointWriter.start`). The rest
    (buffers, which a forward may change) is copied here."""
    t0 = time.perf_counter()
    shards, rest = tensors.split(tensors.training_state(state.model, state.optimizer))
    changing = tensors.changed_by_the_update(shards, state.model)
    live = {k: v for k, v in shards.items() if k in changing}
    frozen = writer.buffers.copy({k: v for k, v in shards.items() if k not in live})
    files: dict[str, Any] = {ckpt.rng_file(rank): ckpt.rng_state()}
    meta = None
    if rank == 0:
        files[tensors.TRAINER_FILE] = {
            "rest": rest,  # the optimizer's param groups: the same on every rank
            "scheduler": state.scheduler.state_dict(),
            "workload": state.workload.state_dict(),
            "progress": progress.as_dict(),
            "world_size": world,
        }
        meta = {
            "format": ckpt.FORMAT_VERSION,
            "run": cfg.name,
            "step": progress.step,
            "samples": progress.samples,
            "world_size": world,
            "strategy": cfg.scaling.strategy,
            "loss": progress.loss,
            "evaluation": evaluation,
            "wall_time_s": round(progress.elapsed_s, 3),
            "unix_time": time.time(),
            "model": state.model_description,
            "config_digest": cfg.digest(),
            "trajectory": cfg.trajectory(),
        }
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    stall = time.perf_counter() - t0
    writer.start(progress.step, frozen, files, meta, stall, report.as_metrics(), evaluation, live=live)
    return stall
