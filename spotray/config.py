"""The job config: one pydantic tree, validated before any Ray work starts.

Every section forbids unknown keys, every field says what it is for, and a bad file ends
in one line that names the field path and the reason (`ConfigError`). The parts that fix
the training trajectory (workload, optimizer, runtime, seed) are kept apart from the parts that
only say where and how it runs (scaling, checkpoint, failure, spot), so a run may resume
on another world size or storage but is warned when its trajectory changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spotray.elastic.growth import PAYBACK_RESTARTS
from spotray.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
BUILTIN_GPT = "train.gpt:GPTWorkload"


class WorkloadSection(Section):
    """What is trained: a `spotray.Workload` subclass and its constructor's arguments."""

    entrypoint: str = Field(
        ...,
        pattern=ENTRYPOINT_PATTERN,
        description=f"module:Class of a spotray.Workload, importable from the directory spotray runs in "
        f"(the built-in GPT: {BUILTIN_GPT})",
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the workload's constructor"
    )


class RuntimeSection(Section):
    """How spotray runs every step, whatever the workload."""

    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs that support it, fp32 on CPU"
    )
    compile: bool = Field(
        False,
        description="torch.compile the model: faster steps after a warm-up on the first step of "
        "each start (reported apart)",
    )


class OptimizerSection(Section):
    """AdamW with linear warmup and cosine decay, as in nanoGPT."""

    global_batch_size: int = Field(
        32, gt=0, description="sequences per optimizer step, the same at every world size"
    )
    micro_batch_size: int = Field(
        8, gt=0, description="sequences per forward pass on one worker; accumulation does the rest"
    )
    steps: int = Field(500, gt=0, description="length of the run and of its LR schedule")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr: float = Field(1e-4, ge=0, description="learning rate at the end of the cosine decay")
    warmup_steps: int = Field(20, ge=0, description="linear warmup from 0 to lr")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay")
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.95, gt=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 turns it off")

    @model_validator(mode="after")
    def _schedule(self) -> OptimizerSection:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        return self


class ScalingSection(Section):
    """How many Ray Train workers, and what each one holds."""

    min_workers: int = Field(1, gt=0, description="fewest workers the job runs on")
    max_workers: int = Field(1, gt=0, description="most workers; equal to min_workers for a fixed size")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL; otherwise CPU and gloo")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every worker holds the whole model and optimizer; fsdp: FSDP2 shards "
        "them over the workers (for a model bigger than one GPU); checkpoints load under either",
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per worker, e.g. {spot_slot: 1}"
    )
    resize_check_s: float = Field(
        60.0,
        gt=0,
        description="elastic jobs: how often Ray Train re-sizes a running job "
        "(ScalingConfig.elastic_resize_monitor_interval_s); spotray also weighs growth as soon as nodes join",
    )
    grow_payback_restarts: float = Field(
        PAYBACK_RESTARTS,
        ge=0,
        description="elastic jobs grow only when the extra workers save this many restarts' worth "
        "of time over the rest of the run (0: whenever there is room, as Ray does)",
    )

    on_demand_after_s: float | None = Field(
        None,
        gt=0,
        description="the on-demand fallback, off by default: after this many seconds with spot "
        "capacity below min_workers, run min_workers on on-demand nodes until spot is back",
    )
    on_demand_resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"on_demand_gpu_node": 1.0},
        description="what an on-demand worker asks for instead of resources_per_worker "
        "(cluster.yaml's on-demand GPU type has it)",
    )

    def worker_resources(self) -> dict[str, float]:
        """The Ray resources one worker reserves: its CPUs, a GPU with use_gpu, and the extras."""
        gpu = {"GPU": 1.0} if self.use_gpu else {}
        return {"CPU": self.cpus_per_worker, **self.resources_per_worker, **gpu}

    def slots(self, resources: dict[str, float]) -> int:
        """How many of this job's workers a node with these Ray resources (its totals) can
        host at once, at most max_workers."""
        fits = min(math.floor(resources.get(k, 0.0) / v) for k, v in self.worker_resources().items() if v > 0)
        return max(0, min(fits, self.max_workers))

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSection:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})"
            )
        for key in ("CPU", "GPU"):
            if key in self.resources_per_worker:
                raise ValueError(f"set {key} through cpus_per_worker/use_gpu, not resources_per_worker")
        if self.on_demand_after_s is not None:
            if not self.resources_per_worker:
                raise ValueError(
                    "on_demand_after_s needs resources_per_worker to name the spot nodes' resource "
                    "(e.g. {spot_gpu_node: 1}): otherwise spot and on-demand nodes look the same"
                )
            if not self.on_demand_resources_per_worker or set(self.on_demand_resources_per_worker) & {
                *self.resources_per_worker,
                "CPU",
                "GPU",
            }:
                raise ValueError(
                    "on_demand_resources_per_worker must name a resource of its own, "
                    "not one of resources_per_worker, CPU or GPU"
                )
        return self


class CheckpointSection(Section):
    """Where checkpoints go, how often, and how many stay."""

    storage_path: str = Field(
        "./runs", description="local folder or s3://bucket/prefix; the run lives in <path>/<name>"
    )
    interval: int | Literal["auto"] = Field(
        50, description="steps between checkpoints, or auto (Young/Daly, see spotray.elastic.interval)"
    )
    keep: int = Field(3, gt=0, description="newest checkpoints kept (CheckpointConfig.num_to_keep)")
    prior_mtbf_hours: float = Field(
        2.0, gt=0, description="auto interval: prior mean time between failures of one node"
    )

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"must be a positive number of steps or 'auto', got {v!r}")
        return v


class S3Section(Section):
    """How to reach S3 (checkpoints and data); pyarrow does not read AWS_ENDPOINT_URL itself."""

    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint; default AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS",
    )
    region: str | None = Field(None, description="default AWS_REGION, AWS_DEFAULT_REGION, us-east-1")

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v


class FailureSection(Section):
    """Retry budgets (Ray Train's FailureConfig). Preemptions have their own budget."""

    max_failures: int = Field(3, ge=-1, description="worker errors and lost nodes retried; -1 forever")
    max_preemption_failures: int = Field(
        -1, ge=-1, description="announced preemptions (drained nodes) retried; -1 forever"
    )
    warm_spares: bool = Field(
        True,
        description="on a cluster, keep idle worker processes with the imports done on every node "
        "that can host a worker, one per worker it can host, so a restart skips them "
        "(~0.5 GB of host memory each)",
    )


class SpotSection(Section):
    """What the nodes are, for the cost ledger."""

    instance_type: str = Field("p3.8xlarge", description="EC2 instance type of the workers")
    region: str = Field("us-east-1", description="AWS region")


class JobConfig(Section):
    """A training job: what it trains (workload, optimizer, seed, runtime) and how it runs."""

    name: str = Field(..., pattern=NAME_PATTERN, description="run name; its checkpoints' folder")
    seed: int = Field(1337, ge=0, description="fixes the initial weights and the data order")
    workload: WorkloadSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    failure: FailureSection = Field(default_factory=FailureSection)
    s3: S3Section = Field(default_factory=S3Section)
    spot: SpotSection | None = Field(None, description="instance type and region, for cost")

    @model_validator(mode="after")
    def _batch_covers_workers(self) -> JobConfig:
        if self.optimizer.global_batch_size < self.scaling.max_workers:
            raise ValueError(
                f"optimizer.global_batch_size ({self.optimizer.global_batch_size}) is smaller "
                f"than scaling.max_workers ({self.scaling.max_workers}): some workers would idle"
            )
        return self

    def trajectory(self) -> dict[str, Any]:
        """The settings that fix the sequence of parameters, whatever the world size."""
        return self.model_dump(include={"seed", "workload", "optimizer", "runtime"}, mode="json")

    def digest(self) -> str:
        blob = json.dumps(self.trajectory(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_REPR = reprlib.Repr()  # bounded however deep or wide the value (Python 3.11 has no kwargs)
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 200, 200


def _short_repr(value: Any) -> str:
    """A value as the user wrote it, cut to 200 characters however big it is."""
    text = _REPR.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "literal[")))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif "input" in first and first["type"] not in ("value_error",) and not isinstance(first["input"], dict):
        msg = f"{msg} (got {_short_repr(first['input'])})"
    where = f"{loc}: " if loc else ""
    more = len(err.errors()) - 1
    tail = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    return f"{source}: {where}{msg}{tail}"


def parse_config(data: Any, source: str = "config") -> JobConfig:
    """Validate a parsed YAML document; `ConfigError` names the field and the reason."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    old = [key for key in ("model", "data") if key in data]
    if old:
        raise ConfigError(
            f"{source}: {' and '.join(old)} moved into the workload: their keys (preset, n_layer, ..., "
            f"source) go under workload.args with workload.entrypoint: {BUILTIN_GPT}, and precision "
            "is runtime.precision (docs/workloads.md)"
        )
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_config(path: str | os.PathLike[str]) -> JobConfig:
    """Read and validate a job config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    try:
        size = _expanded_size(yaml.compose(text, Loader=yaml.SafeLoader))
        if size > MAX_YAML_NODES:
            raise ConfigError(
                f"{path}: its aliases expand to {size:,} values (at most {MAX_YAML_NODES:,}): "
                "a config that size is a mistake or an attack"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    return parse_config(data, str(path))


# YAML aliases share one parsed value, so a few hundred bytes can stand for billions of
# values ("billion laughs") that later code (hashing, JSON for a Ray Job) would expand.
MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node | None, memo: dict[int, int] | None = None) -> int:
    """How many values the document has once every alias is expanded (memoized per node)."""
    if node is None:
        return 0
    memo = {} if memo is None else memo
    if id(node) not in memo:
        memo[id(node)] = 1  # a node that contains itself counts once
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        memo[id(node)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[id(node)]
