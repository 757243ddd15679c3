"""The seam's contract with the installed Ray: every private name spotray uses is still
there and still does what the seam relies on. A failure names the seam to update."""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

import pytest

from spotray import ray_compat
from spotray.errors import SpotrayError


def has(obj: Any, name: str, seam: str) -> Any:
    assert hasattr(obj, name), f"Ray no longer has {getattr(obj, '__name__', obj)}.{name}: update {seam}"
    return getattr(obj, name)


def uses(fn: Any, text: str, seam: str) -> None:
    assert text in inspect.getsource(fn), f"{fn.__qualname__} no longer uses {text}: update {seam}"


NODE = "spotray/ray_compat/node.py"
TRAIN = "spotray/ray_compat/train.py"
AUTOSCALER = "spotray/ray_compat/autoscaler.py"
WORKERS = "spotray/ray_compat/workers.py"


def test_the_supported_version_is_installed_and_another_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    ray_compat.check_ray_version()
    monkeypatch.setattr(ray_compat, "version", lambda _: "2.61.0")
    with pytest.raises(SpotrayError, match=r"spotray needs Ray 2\.60\.x \(found 2\.61\.0\)"):
        ray_compat.check_ray_version()


def test_loopback_flag_and_driver_printing() -> None:
    from ray._private import ray_constants, services, worker

    has(ray_constants, "ENABLE_RAY_CLUSTER", NODE)
    uses(services.get_node_ip_address, "ray_constants.ENABLE_RAY_CLUSTER", NODE)
    has(worker, "print_to_stdstream", NODE)
    uses(worker.listen_error_messages, "print_to_stdstream(", NODE)
    uses(worker.listen_error_messages, '"pid": "raylet"', NODE)


def test_gcs_client_kv_drain_and_node_table() -> None:
    from ray._private import services
    from ray._raylet import InnerGcsClient  # what GcsClient forwards its methods to
    from ray.experimental import internal_kv

    for name in ("drain_node", "internal_kv_put", "internal_kv_get", "internal_kv_keys"):
        has(InnerGcsClient, name, NODE)
    for name in ("get_all_node_info", "get_draining_nodes"):
        has(InnerGcsClient, name, NODE)
    has(internal_kv, "_internal_kv_get", NODE)
    has(internal_kv, "_internal_kv_put", NODE)
    has(services, "canonicalize_bootstrap_address", NODE)
    state = importlib.import_module("ray._private.state")
    has(state.state, "get_draining_nodes", NODE)
    from ray.core.generated import autoscaler_pb2

    assert "DRAIN_NODE_REASON_PREEMPTION" in autoscaler_pb2.DrainNodeReason.keys(), NODE
    reasons = ray_compat.node.node_death_reasons()
    expected = ("EXPECTED_TERMINATION", "UNEXPECTED_TERMINATION", "AUTOSCALER_DRAIN_PREEMPTED")
    for name in (*expected, "AUTOSCALER_DRAIN_IDLE"):
        assert name in reasons, f"NodeDeathInfo.Reason has no {name}: update {NODE}"
    assert ray_compat.node.node_alive_state() == 0


def test_train_policy_members_and_controller_hook() -> None:
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy
    from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
        TrainAutoscalingCoordinatorClient,
    )

    for name in ("_get_reserved_resources", "_count_possible_workers", "_get_resize_decision"):
        has(ElasticScalingPolicy, name, TRAIN)
    source = inspect.getsource(ElasticScalingPolicy)
    for name in ("_requester_id", "_latest_reserved_resources", "_latest_reserved_resources_query_time"):
        assert f"self.{name}" in source, f"ElasticScalingPolicy no longer keeps {name}: update {TRAIN}"
    uses(ElasticScalingPolicy.make_decision_for_running_worker_group, "_get_reserved_resources", TRAIN)
    client = inspect.getsource(TrainAutoscalingCoordinatorClient)
    assert "self._autoscaling_coordinator" in client and "self._requester_id" in client, TRAIN
    from ray.train.v2._internal.execution.controller import TrainController

    hook = has(TorchTrainer, "_initialize_and_run_controller", TRAIN)
    uses(hook, "**controller_init_kwargs", TRAIN)  # handed on to the controller as they come
    controller_args = inspect.signature(TrainController.__init__).parameters
    assert {"scaling_policy", "failure_policy"} <= set(controller_args), TRAIN
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy

    assert "training_failed_error" in inspect.signature(DefaultFailurePolicy.make_decision).parameters, TRAIN


def test_launcher_config_checks_and_fake_provider() -> None:
    from ray.autoscaler._private import util

    has(util, "prepare_config", AUTOSCALER)
    has(util, "validate_config", AUTOSCALER)
    module, _, cls = ray_compat.autoscaler.FAKE_PROVIDER_MODULE.rpartition(".")
    has(importlib.import_module(module), cls, AUTOSCALER)
    assert ray_compat.autoscaler.fake_head_node_id()


def test_setup_hook_runtime_env_and_prestart_rpc() -> None:
    from ray._private import grpc_utils, ray_constants
    from ray._private.workers import default_worker
    from ray._raylet import CoreWorker
    from ray.core.generated import node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2

    hook = ray_compat.workers.setup_hook_env("m.f")
    assert hook == {ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: "m.f"}, WORKERS
    source = inspect.getsource(default_worker)
    assert "ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR" in source, f"no setup hook env: update {WORKERS}"
    has(CoreWorker, "get_current_runtime_env", WORKERS)
    has(grpc_utils, "init_grpc_channel", WORKERS)
    uses(node_manager_pb2_grpc.NodeManagerServiceStub.__init__, "self.PrestartWorkers =", WORKERS)
    fields = set(node_manager_pb2.PrestartWorkersRequest.DESCRIPTOR.fields_by_name)
    wanted = {"language", "job_id", "runtime_env_info", "keep_alive_duration_secs", "num_workers"}
    assert wanted <= fields, f"PrestartWorkersRequest lacks {wanted - fields}: update {WORKERS}"
    info = runtime_environment_pb2.RuntimeEnvInfo.DESCRIPTOR.fields_by_name
    assert "serialized_runtime_env" in info, WORKERS


def test_the_hand_over_ends_the_training_function_without_an_error_log() -> None:
    """Ray Train's worker logs each error that ends the training function, traceback and all;
    the seam keeps spotray's own NodeLeaving out of that log and leaves every other error in."""
    from ray.train.v2._internal.util import construct_user_exception_with_traceback

    from spotray.ray_compat import train
    from spotray.runtime.preemption import NodeLeaving

    logger = has(train.train_util, "logger", TRAIN)
    uses(construct_user_exception_with_traceback, "logger.error", TRAIN)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    before = list(logger.filters)
    try:
        train.quiet_expected_errors(NodeLeaving)
        train.quiet_expected_errors(NodeLeaving)  # once per process, however often the loop starts
        assert len(logger.filters) == len(before) + 1
        for err in (NodeLeaving(33, None, {"a1b2c3d4e5": [0]}), RuntimeError("a real crash")):
            try:
                raise err
            except Exception as e:
                construct_user_exception_with_traceback(e)
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = before
    assert [r.getMessage().splitlines()[-1] for r in seen] == ["RuntimeError: a real crash"]


def test_a_workers_own_preemption_signal_is_where_the_seam_reads_it() -> None:
    from ray.train.v2._internal.execution import context
    from ray.train.v2._internal.execution.worker_group.worker import RayTrainWorker

    from spotray.ray_compat import train

    has(context, "get_train_context", TRAIN)
    uses(RayTrainWorker.mark_preempt, "preemption_context.preemption_info = info", TRAIN)
    has(context.PreemptionContext, "preemption_info", TRAIN)
    assert train.signalled_preemption() is None  # outside a worker: no context, no signal


def test_the_upload_the_loop_times_is_the_one_report_runs_without_an_upload_function() -> None:
    from ray.train.v2._internal.execution.context import TrainContext
    from ray.train.v2._internal.execution.storage import StorageContext
    from ray.train.v2.api.context import TrainContext as PublicContext

    has(PublicContext, "get_storage", TRAIN)
    persist = has(StorageContext, "persist_current_checkpoint", TRAIN)
    assert list(inspect.signature(persist).parameters) == ["self", "checkpoint", "checkpoint_dir_name"], TRAIN
    uses(TrainContext._upload_checkpoint, "self.storage_context.persist_current_checkpoint(", TRAIN)
    uses(TrainContext._upload_checkpoint, "checkpoint_upload_fn(", TRAIN)
