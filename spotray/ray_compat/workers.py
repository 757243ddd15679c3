"""Ray's worker pool, where its public API has no answer: warm worker processes.

A restart of a Ray Train worker group creates new actors, and a new actor needs a new
Python process that imports Ray, torch and the workload before it trains: seconds per
restart that no checkpoint saves. A raylet keeps a pool of idle workers and hands an
actor an idle one whose job and runtime environment match (its hash of the serialized
runtime env). Two private pieces let spotray fill that pool with processes that have
already imported what a training worker imports:

- the setup-hook environment variable, which every worker whose runtime env carries it
  runs before it takes work (`ray.init(runtime_env={"worker_process_setup_hook": ...})`
  sets it for a whole job; Ray does not convert the key in an actor's own runtime env);
- the raylet's `PrestartWorkers` RPC (public replacement: none; Ray's own prestart at
  start-up uses the job's runtime env, never an actor's).
"""

from __future__ import annotations

from typing import Any

KEEP_ALIVE_S = 7 * 24 * 3600  # idle warm workers stay until the job ends (Ray kills them then)


def setup_hook_env(hook: str) -> dict[str, str]:
    """The env var that makes a worker run `hook` ("module.function") before it takes work
    (`ray._private.ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR`, read by Ray's
    `default_worker.py`)."""
    from ray._private import ray_constants

    return {ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: hook}


def current_runtime_env() -> str:
    """This worker's runtime env exactly as Ray serialized it (the job's merged with the
    actor's): what the raylet hashes to match idle workers (`CoreWorker.get_current_runtime_env`;
    public `ray.get_runtime_context().runtime_env` parses it, losing the exact text)."""
    from ray._private import worker

    return str(worker.global_worker.core_worker.get_current_runtime_env())


def prestart(node: dict[str, Any], job_id: str, runtime_env: str, count: int) -> None:
    """Ask `node`'s raylet (an entry of `ray.nodes()`) to start `count` idle workers of job
    `job_id` (hex) with `runtime_env` (serialized), kept for KEEP_ALIVE_S: an actor of the
    same job and runtime env created there later takes one instead of starting a process."""
    from ray._private.grpc_utils import init_grpc_channel  # Ray's channel: token auth included
    from ray.core.generated import (
        common_pb2,
        node_manager_pb2,
        node_manager_pb2_grpc,
        runtime_environment_pb2,
    )

    channel = init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}")
    try:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(
            node_manager_pb2.PrestartWorkersRequest(
                language=common_pb2.Language.PYTHON,
                job_id=bytes.fromhex(job_id),
                runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env=runtime_env),
                keep_alive_duration_secs=KEEP_ALIVE_S,
                num_workers=count,
            ),
            timeout=3,  # the driver's progress thread waits on it
        )
    finally:
        channel.close()
