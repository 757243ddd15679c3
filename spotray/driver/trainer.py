"""Assembles and runs a job: preflight, Ray Train's TorchTrainer, live progress, summary.

The driver does what must happen before Ray starts (validate, import the workload and run
one loss on the CPU, check the run's existing checkpoints against the model) and what needs
the whole picture (progress, the summary, the workload's preview of the final model). The
per-rank work is in `spotray.runtime.loop`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from spotray.config import JobConfig
from spotray.cost.ledger import RunRecorder, current_cluster, ledger_problem
from spotray.driver import runlock
from spotray.driver.metrics import RunMetrics
from spotray.driver.progress import ProgressView, RunState, start_hub
from spotray.driver.resources import check_cluster_fits, check_fits, count_parameters
from spotray.driver.warm import WarmSpares
from spotray.elastic.registry import RECOVERIES, Recovery
from spotray.errors import CheckpointMismatchError, Interrupted, SpotrayError, TrainingStopped
from spotray.ray_compat.node import keep_on_loopback, quiet_token_setup_log
from spotray.runtime import checkpoint as ckpt
from spotray.runtime import messages as msg
from spotray.runtime.preload import forget_ready_spares
from spotray.runtime.storage import Location, resolve, run_location
from spotray.spot.watch import read_notices
from spotray.workload import ModelFacts, Workload, entrypoint_module

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POLL_S = 1.0  # how often the driver asks the hub for news
PRELOAD_HOOK = "spotray.runtime.preload.preload"  # every worker's setup hook, with warm spares

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    name: str
    steps: int
    final_loss: float
    restarts: int
    notices: int  # spot preemption notices the training loop acted on
    wall_s: float
    run_uri: str
    checkpoint_uri: str | None
    resumed_from_step: int | None
    evaluation: dict[str, float]  # Workload.evaluate at the last checkpoint
    preview: str | None  # Workload.preview of the final model
    warmup_s: float = 0.0  # runtime.compile's first steps, in wall_s but apart from the pace


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key (old -> new)` for every trajectory setting that differs from the checkpoint's."""
    a, b = _flatten(saved), _flatten(now)
    return [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


@dataclass(frozen=True)
class Preflight:
    """What the checks before Ray starts found."""

    run: Location
    existing: ckpt.StoredCheckpoint | None  # the checkpoint the run resumes from
    workload: Workload
    model: ModelFacts


def check_workload(cfg: JobConfig, workers_here: bool) -> tuple[Workload, ModelFacts]:
    """Import and build the workload here, and compute one loss on two samples on the CPU:
    a workload that cannot run, or a model its workers cannot hold (`workers_here`: they run
    on this machine), fails as one line before Ray starts, not on every worker."""
    from spotray.runtime.storage import export_s3_env
    from spotray.workload import load, smoke_check

    export_s3_env(cfg.s3)
    workload = load(cfg.workload.entrypoint, cfg.workload.args)
    parameters = count_parameters(workload)
    if parameters is not None:
        check_fits(cfg, parameters, workers_here)
    return workload, smoke_check(workload, cfg.workload.entrypoint, cfg.seed, cfg.scaling.strategy)


def preflight(
    cfg: JobConfig, fresh: bool, console: Console, workload: Workload, facts: ModelFacts
) -> Preflight:
    """Check the run's storage against the checked workload before anything starts."""
    from spotray.runtime.resume import shape_difference

    run = run_location(cfg)
    try:
        if fresh and run.exists():
            console.print(f"--fresh: deleting the checkpoints in {run.uri}")
            kept = ckpt.delete_run(run)
            if kept:
                console.print(f"--fresh: kept what spotray did not write: {', '.join(kept[:5])}")
        for line in ckpt.reconcile_with_ray(run):
            console.print(f"[yellow]{line}[/]")
        existing = ckpt.latest(run)
    except OSError as err:
        raise SpotrayError(f"cannot read checkpoint storage {run.uri}: {err}") from None
    if existing is None:
        return Preflight(run, None, workload, facts)
    meta = existing.meta or {}
    problem = shape_difference(meta, facts.shapes)
    if problem:
        raise CheckpointMismatchError(
            f"{existing.location.uri} {problem}; use another name, or --fresh to start over"
        )
    changes = changed_settings(meta.get("trajectory", {}), cfg.trajectory())
    if changes:
        console.print(f"[yellow]resuming with changed settings:[/] {', '.join(changes)}")
    return Preflight(run, existing, workload, facts)


def start_ray(cfg: JobConfig, attach: bool, log_to_driver: bool = False) -> None:
    """Attach to the cluster (inside a Ray Job) or start a private local Ray."""
    if ray.is_initialized():
        return
    # Workers do not inherit the driver's sys.path: make a source checkout and the directory
    # the run starts from (the user's workload, as with `python -m`) importable.
    paths = (str(PROJECT_ROOT), os.getcwd(), os.environ.get("PYTHONPATH"))
    pythonpath = os.pathsep.join(p for p in paths if p)
    if attach:
        ray.init(address="auto", log_to_driver=log_to_driver, logging_level=logging.WARNING)
        return
    keep_on_loopback()
    # "Token authentication is enabled" is news to nobody on a private 127.0.0.1 cluster.
    quiet_token_setup_log()
    scaling = cfg.scaling
    cpus = max(os.cpu_count() or 1, math.ceil(scaling.max_workers * scaling.cpus_per_worker))
    ray.init(
        address="local",
        num_cpus=cpus,
        resources={k: v * scaling.max_workers for k, v in scaling.resources_per_worker.items()},
        # The dashboard also serves the State API that Ray Train's placement-group cleaner polls.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=log_to_driver,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )


def build_trainer(
    cfg: JobConfig,
    run: Location,
    stop_step: int,
    hub: Any,
    progress_every_s: float = 0.5,
    recovery: Recovery = RECOVERIES["spotray"],
    warm_spares: bool = False,
) -> Any:
    """Ray Train's trainer for the run. With `warm_spares`, every worker process runs
    `runtime.preload` as it starts, and the driver keeps spares of them (`driver.warm`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from spotray.runtime.loop import LoopArgs, train_loop_per_worker

    s = cfg.scaling
    elastic = s.min_workers != s.max_workers
    workers = (s.min_workers, s.max_workers) if elastic else s.min_workers
    storage_root = resolve(cfg.checkpoint.storage_path, cfg.s3)
    trainer_cls = recovery.trainer_class(cfg)
    return trainer_cls(
        train_loop_per_worker,
        train_loop_config={
            "args": LoopArgs(
                config=cfg.model_dump(mode="json"),
                run=run,
                stop_step=stop_step,
                hub=hub,
                launch_dir=os.getcwd(),
                progress_every_s=progress_every_s,
                hand_over=recovery.own_policies,
            )
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=s.use_gpu,
            resources_per_worker=s.worker_resources(),
            **recovery.scaling_options(cfg),
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage_root.path,
            storage_filesystem=storage_root.fs,
            worker_runtime_env=preloading(cfg) if warm_spares else {},
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            callbacks=recovery.callbacks(cfg),
            failure_config=FailureConfig(
                max_failures=cfg.failure.max_failures,
                max_preemption_failures=cfg.failure.max_preemption_failures,
            ),
        ),
    )


def preloading(cfg: JobConfig) -> dict[str, Any]:
    """The workers' runtime env that runs `runtime.preload` in each, the workload's module too."""
    from spotray.ray_compat.workers import setup_hook_env
    from spotray.runtime.preload import MODULES_ENV

    module = entrypoint_module(cfg.workload.entrypoint)
    return {"env_vars": {**setup_hook_env(PRELOAD_HOOK), MODULES_ENV: module}}


def warm_spares(cfg: JobConfig) -> WarmSpares:
    """The follower that keeps warm spares for this run's workers on the cluster's nodes."""
    from spotray.ray_compat.node import draining_node_ids
    from spotray.ray_compat.workers import prestart

    job = ray.get_runtime_context().get_job_id()
    return WarmSpares(cfg.scaling, job, ray.nodes, draining_node_ids, prestart)


def _failure_message(err: Exception) -> str:
    """The root cause of a failed fit(), as one line."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        rank, cause = sorted(failures.items())[0]
        text = str(cause).strip().splitlines()
        return f"worker rank {rank} failed: {text[-1] if text else type(cause).__name__}"
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


Observer = Callable[[msg.Stepped | None, list[msg.Event]], None]


@contextlib.contextmanager
def following(
    hub: Any,
    cfg: JobConfig,
    state: RunState,
    record_cost: bool,
    view: ProgressView,
    observers: list[Observer],
) -> Iterator[None]:
    """While the block runs, a thread hands the hub's news every POLL_S to the progress view,
    Ray's metrics, the cost ledger (starts, checkpoints and the watchers' notices, for the
    bill's lost work; with `record_cost`, when the ledger can be written) and `observers`;
    then one last poll after the end."""
    gcs = ray.get_runtime_context().gcs_address
    cluster = current_cluster()
    recorder = RunRecorder(cfg.name, cluster, notices=lambda: read_notices(gcs)) if record_cost else None
    metrics = RunMetrics(cfg.name, cluster, gcs, state)
    followers = [f for f in (view.update, metrics, recorder, *observers) if f is not None]
    done = threading.Event()

    def poll() -> None:
        seen = 0
        while True:
            finished = done.is_set()
            latest, events = ray.get(hub.poll.remote(seen))
            seen += len(events)
            for follow in followers:
                follow(latest, events)
            if finished:
                break
            done.wait(POLL_S)
        metrics.finish()
        if recorder:
            recorder.close()  # in this thread: SQLite connections belong to the thread that made them

    poller = threading.Thread(target=poll, name="spotray-progress", daemon=True)
    poller.start()
    try:
        yield
    finally:
        done.set()
        poller.join(timeout=10)


def check_finished(cfg: JobConfig, run: Location, state: RunState, stop: int) -> None:
    """A run that ended short of `stop`: interrupted (Ctrl-C), or stopped by the loop (a
    non-finite loss); one line that says where the next run resumes."""
    last = ckpt.latest(run)
    if state.stopped is not None:
        kept = f"the newest checkpoint is step {last.step}" if last else "no checkpoint was written"
        raise TrainingStopped(
            f"{cfg.name} stopped: {state.stopped}, before the update; {kept}. Lower optimizer.lr "
            "or check the data, then run again to resume"
        )
    if last is None or last.step < stop:  # aborted: Ctrl-C
        where = f"from step {last.step}" if last else "from scratch (no checkpoint yet)"
        raise Interrupted(
            f"{cfg.name} stopped at step {state.step}; run the same command again to resume {where}"
        )


def train(
    cfg: JobConfig,
    stop_step: int | None,
    fresh: bool,
    console: Console,
    attach: bool = False,
    log_to_driver: bool = False,
    hub: Any = None,
    observer: Observer | None = None,
    progress_every_s: float = 0.5,
    recovery: Recovery = RECOVERIES["spotray"],
) -> RunSummary:
    """Run the job to `stop_step` (default: the config's steps), resuming from storage.

    `attach` joins the cluster this process runs in (a Ray Job); otherwise a private Ray
    starts here. Ray's own worker logs are shown only with `log_to_driver`. `hub` and
    `observer` let a caller (`spotray chaos`) follow the run's events as they come, and
    `progress_every_s` is how often rank 0 reports its step (0: every step). `recovery`
    is spotray's by default; `RECOVERIES["ray"]` is Ray Train alone, for comparisons.
    """
    # Writes nothing: a bad workload leaves no trace.
    workload, facts = check_workload(cfg, workers_here=not attach)
    if attach:  # the cluster's nodes, before anything is written
        start_ray(cfg, attach, log_to_driver)
        check_cluster_fits(cfg, facts.parameters, ray.nodes())
    with runlock.hold(run_location(cfg), cfg.name):  # before --fresh deletes anything
        stop = stop_step or cfg.optimizer.steps
        checked = preflight(cfg, fresh, console, workload, facts)
        run, existing = checked.run, checked.existing
        resumed = existing.step if existing else None
        if existing is not None and existing.step >= stop:
            console.print(
                f"{run.uri} is already at step {existing.step}: nothing to train (--steps N goes on)"
            )
            return _summary(
                cfg, run, RunState(total=stop, step=existing.step), 0.0, resumed, checked.workload
            )

        console.print(f"[bold]{cfg.name}[/]: training to step {stop}, checkpoints in {run.uri}")
        problem = ledger_problem()
        if problem:
            console.print(f"[yellow]warning:[/] {problem}", soft_wrap=True)
        start_ray(cfg, attach, log_to_driver)
        for key, value in recovery.ray_env.items():  # a value already set wins
            os.environ.setdefault(key, value)
        hub = hub or start_hub()
        state = RunState(total=stop)
        # On a cluster, where nodes come and go: a private Ray on this machine loses none.
        spares = warm_spares(cfg) if attach and recovery.warm_spares and cfg.failure.warm_spares else None
        observers = [o for o in (observer, spares) if o is not None]
        t0 = time.perf_counter()
        with ProgressView(state, console) as view, following(hub, cfg, state, not problem, view, observers):
            try:
                build_trainer(cfg, run, stop, hub, progress_every_s, recovery, spares is not None).fit()
            except ray.train.TrainingFailedError as err:
                raise SpotrayError(f"training failed: {_failure_message(err)}") from err
            except SystemExit:  # Ray Train's SIGINT handler aborts the run, then exits
                pass
            finally:
                if spares is not None:
                    forget_ready_spares(spares.job_id)
        check_finished(cfg, run, state, stop)
        # Where the workers really resumed: they verify checksums, the preflight only sizes.
        resumed = state.resumed_from if state.starts else resumed
        return _summary(cfg, run, state, time.perf_counter() - t0, resumed, checked.workload)


def _summary(
    cfg: JobConfig, run: Location, state: RunState, wall_s: float, resumed: int | None, workload: Workload
) -> RunSummary:
    final = ckpt.latest(run)
    meta = (final.meta or {}) if final else {}
    return RunSummary(
        name=cfg.name,
        steps=int(meta.get("step", state.step)),
        final_loss=float(meta.get("loss", state.loss)),
        restarts=state.restarts,
        notices=state.notices,
        wall_s=wall_s,
        run_uri=run.uri,
        checkpoint_uri=final.location.uri if final else None,
        resumed_from_step=resumed,
        evaluation=dict(meta.get("evaluation") or {}),
        preview=preview(workload, final, cfg.seed) if final else None,
        warmup_s=state.warmup_s,
    )


def preview(workload: Workload, checkpoint: ckpt.StoredCheckpoint, seed: int) -> str | None:
    """The workload's preview of a checkpoint's model, built and loaded here on the CPU."""
    import torch

    from spotray.runtime import tensors

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = workload.build_model()
    with tempfile.TemporaryDirectory(prefix="spotray-preview-") as cache:
        files = ckpt.CheckedFiles(checkpoint, Path(cache) / "checkpoint")
        try:
            tensors.load_model(model, files.folder, files.get)
        except ckpt.FileCheckError as err:
            logger.warning("no preview: checkpoint %s: %s", checkpoint.location.uri, err)
            return None
    model.eval()
    with torch.no_grad():
        return workload.preview(model)
