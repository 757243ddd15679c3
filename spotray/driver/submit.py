"""`spotray train --address`: the same run, submitted to a cluster as a Ray Job.

The config is validated here, and the workload imported (not built: the cluster may have
what this machine lacks); the config travels in the job's environment as JSON, the code as
`py_modules` (this checkout's `spotray` and `train`, and the user's workload package when it
lives in the current directory; a single-file module goes as the job's `working_dir`), so
the cluster runs what you have even when its image carries an older spotray. The job's driver is
`python -m spotray.driver.job`, which calls the same `spotray.driver.trainer.train` as a local run and
prints plain progress lines that stream back here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console

from spotray.cluster.auth import LOCAL_HOSTS, check_token_transport, use_token_auth_if_available
from spotray.config import JobConfig
from spotray.errors import SpotrayError

CONFIG_ENV = "SPOTRAY_JOB_CONFIG"
STOP_STEP_ENV = "SPOTRAY_JOB_STOP_STEP"
FRESH_ENV = "SPOTRAY_JOB_FRESH"
PACKAGES = [Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "train"]
AGENT_WAIT_S = 60.0


def dashboard_url(address: str) -> str:
    """`auto` (this machine's running cluster), `local` (`spotray up --local`'s), `HOST:PORT`
    or an http(s) URL."""
    if address == "local":
        from spotray.cluster.local import load_state

        return load_state().dashboard_url
    if address == "auto":
        return (
            os.environ.get("RAY_API_SERVER_ADDRESS")
            or os.environ.get("RAY_ADDRESS")
            or "http://127.0.0.1:8265"
        )
    return address if "://" in address else f"http://{address}"


def for_cluster(cfg: JobConfig, url: str, console: Console) -> JobConfig:
    """Pin relative paths to this machine's view, and warn where a remote cluster cannot see them."""
    storage = cfg.checkpoint.storage_path
    if not storage.startswith("s3://"):
        storage = str(Path(storage).expanduser().resolve())
        if urlparse(url).hostname not in LOCAL_HOSTS:
            console.print(
                f"[yellow]warning:[/] checkpoint.storage_path {storage} is a local folder; on a remote "
                "cluster every node must see it (NFS), or use s3://"
            )
    return cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={"storage_path": storage})})


def workload_code(entrypoint: str, here: Path) -> dict[str, Any]:
    """The runtime_env entries that carry the workload's code to the cluster.

    Its top-level package or module, when it lives in `here` (where `spotray train` runs);
    nothing when it is installed (on the node image, or spotray's own `train`)."""
    from spotray.workload import entrypoint_module

    top = entrypoint_module(entrypoint).split(".")[0]
    if (here / top).is_dir():
        return {"py_modules": [str((here / top).resolve())]}
    if (here / f"{top}.py").is_file():
        folder = Path(tempfile.mkdtemp(prefix="spotray-workload-"))
        shutil.copy2(here / f"{top}.py", folder)
        return {"working_dir": str(folder)}
    return {}


def quiet_ray_client_logs() -> None:
    """Ray's job client logs every package upload and websocket close at INFO; spotray says
    what matters itself (--debug shows them)."""
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)


def submit(
    cfg: JobConfig,
    address: str,
    steps: int | None,
    fresh: bool,
    console: Console,
    insecure: bool = False,
    ray_logs: bool = False,
) -> int:
    """Submit the run as a Ray Job, stream its logs, and return its exit code. `insecure`:
    send the token over plain http anywhere; `ray_logs`: show Ray's client logs too."""
    use_token_auth_if_available()
    from ray.job_submission import JobStatus, JobSubmissionClient

    from spotray.workload import check_args, resolve_class

    check_args(resolve_class(cfg.workload.entrypoint), cfg.workload.entrypoint, cfg.workload.args)
    url = dashboard_url(address)
    check_token_transport(url, insecure)
    cfg = for_cluster(cfg, url, console)
    if not ray_logs:
        quiet_ray_client_logs()
    try:
        client = JobSubmissionClient(url)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SpotrayError(f"cannot reach the Ray dashboard at {url}: {str(err).splitlines()[0]}") from None
    env = {CONFIG_ENV: cfg.model_dump_json(), FRESH_ENV: "1" if fresh else "0"}
    if steps:
        env[STOP_STEP_ENV] = str(steps)
    code = workload_code(cfg.workload.entrypoint, Path.cwd())
    modules = [str(p) for p in PACKAGES] + code.pop("py_modules", [])
    job_id = _submit(
        client,
        entrypoint="python -m spotray.driver.job",
        submission_id=f"spotray-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        runtime_env={"py_modules": modules, "env_vars": env, **code},
        metadata={"spotray_run": cfg.name},
    )
    console.print(f"submitted Ray Job [bold]{job_id}[/] to {url}; streaming its logs (Ctrl-C detaches)")

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            console.out(chunk, end="", highlight=False)

    try:
        asyncio.run(stream())
    except KeyboardInterrupt:
        console.print(f"\ndetached; the job goes on. Stop it with: ray job stop {job_id} --address {url}")
        return 130
    status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        console.print(f"[red]job {job_id} {status.value.lower()}[/]: {info.message or ''}".rstrip(": "))
        return 1
    return 0


def _submit(client: Any, **job: Any) -> str:
    """Submit, waiting out a head that is still starting: its job agent comes up seconds
    after the dashboard answers ("No available agent to submit job")."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2)
