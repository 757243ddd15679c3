"""What the training loop says to the driver and to Ray Train's controller, as typed messages.

Three channels, each with one writer and one reader:

- Events to the driver's `ProgressHub` (rank 0 writes; progress, ledger, metrics and chaos
  read): `Started`, `Stepped`, `Checkpointed`, `Noticed`, `Holding`, `HandingOver`,
  `Stopped`.
- `CheckpointReport`: the metrics handed to `ray.train.report` with each checkpoint (the
  loop writes; spotray's scaling policies read them in their `after_report`).
- `CheckpointRequest`: "checkpoint now" in Ray's internal KV (the watcher and the scaling
  policies write; the loop reads).

Events carry `time`, set by the hub when it receives them (one clock for ordering).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class Event:
    kind: ClassVar[str] = ""
    time: float = field(default=0.0, kw_only=True)

    def as_json(self) -> dict[str, Any]:
        """A plain dict with `kind`, for JSON reports."""
        return {"kind": self.kind, **asdict(self)}


@dataclass
class Started(Event):
    """A worker group began: where it resumed from, and on how many workers and nodes."""

    kind: ClassVar[str] = "start"
    step: int
    world_size: int
    nodes: int
    resumed_from: str | None  # the checkpoint's URI; None from scratch
    recovered_unregistered: bool  # complete in storage, unknown to Ray: adopted
    removed: list[str]  # "uri: why" for checkpoint folders that could never be loaded
    skipped: list[str]  # "uri: why" for complete ones that failed their checksums, kept
    pid: int
    # The restart's phases on this rank (wall clock): the worker process created, the loop
    # entered (after imports, Ray Train's set-up and the process group); `time` is after
    # the model is built and the checkpoint read.
    born: float = 0.0
    entered: float = 0.0
    # Where the group runs, a node id per rank, and the workers' runtime env as Ray serialized
    # it: the driver keeps warm spares like them (spotray.driver.warm).
    worker_nodes: list[str] = field(default_factory=list)
    runtime_env: str = ""
    warm: list[bool] = field(default_factory=list)  # per rank: a warm spare, imports done when taken


@dataclass
class Stepped(Event):
    """Rank 0 finished a step (sent at most every `progress_every_s`, and at the last step)."""

    kind: ClassVar[str] = "step"
    step: int
    loss: float
    world_size: int
    samples_per_s: float
    tokens_per_s: float | None  # when the workload says its tokens per sample
    lr: float


@dataclass
class Checkpointed(Event):
    """A checkpoint was handed to Ray Train (it counts once Ray's upload is whole)."""

    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str
    stall_s: float
    write_s: float
    evaluation: dict[str, float] = field(default_factory=dict)  # Workload.evaluate at this step


@dataclass
class Noticed(Event):
    """The loop saw a preemption notice (a drained node) and checkpoints at once."""

    kind: ClassVar[str] = "notice"
    step: int
    deadline_ms: float | None
    nodes: list[str]
    writing: bool  # a checkpoint write was in flight (it is finished and committed first)


@dataclass
class WarmedUp(Event):
    """The first step of a start under `runtime.compile` ran: its time is the compile's."""

    kind: ClassVar[str] = "warmup"
    step: int
    seconds: float


@dataclass
class Holding(Event):
    """The last checkpoint before the deadline is written; the loop takes no more steps."""

    kind: ClassVar[str] = "hold"
    step: int


@dataclass
class HandingOver(Event):
    """The held checkpoint is registered and the nodes that stay have room: the group ends
    now, `before_deadline_s` ahead of the preempted node's deadline, to restart without it."""

    kind: ClassVar[str] = "handover"
    step: int
    before_deadline_s: float


@dataclass
class Stopped(Event):
    """The run stopped on its own before its last step: the step's loss or gradient norm was
    not finite. Nothing of that step was saved; the checkpoints before it stay."""

    kind: ClassVar[str] = "stop"
    step: int
    reason: str


@dataclass(frozen=True)
class CheckpointReport:
    """The metrics of a checkpoint's `ray.train.report`: progress, and the loop's pace, which
    spotray's scaling policies weigh a growth with (spotray.elastic.growth)."""

    step: int
    loss: float
    samples: int
    step_s: float  # seconds per step lately, on `world_size` workers
    world_size: int
    steps_left: int
    restart_s: float  # this start: worker process created to its first step
    answers_request: float | None = None  # the CheckpointRequest.time this checkpoint answers

    def as_metrics(self) -> dict[str, Any]:
        out = asdict(self)
        if self.answers_request is None:
            del out["answers_request"]
        return out

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any] | None) -> CheckpointReport | None:
        """The report, or None for a report that is not one (a registration of a checkpoint
        found in storage carries only step and loss)."""
        if not metrics:
            return None
        try:
            report = cls(**{f.name: metrics[f.name] for f in fields(cls) if f.name in metrics})
        except TypeError:  # a field missing: not a checkpoint report
            return None
        numbers = (report.step_s, report.restart_s, report.world_size, report.steps_left)
        if not all(isinstance(n, (int, float)) and math.isfinite(n) for n in numbers):
            return None
        return report


@dataclass(frozen=True)
class CheckpointRequest:
    """Ask every running training loop of the cluster for a checkpoint now."""

    time: float
    reason: str
    node_id: str | None = None

    KEY: ClassVar[bytes] = b"checkpoint-request"  # in spotray's internal-KV namespace

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, body: bytes | None) -> CheckpointRequest | None:
        if body is None:
            return None
        try:
            return cls(**json.loads(body))
        except (ValueError, TypeError):
            return None
