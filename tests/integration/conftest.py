"""Integration fixtures: one uninterrupted reference run that interrupted runs must match."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from moto.server import ThreadedMotoServer

from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from tests.conftest import REPO, TEST_CONFIG, free_port, run_spotray, write_config

STEPS = TEST_CONFIG["optimizer"]["steps"]
BATCH = TEST_CONFIG["optimizer"]["global_batch_size"]


def final_state(workdir: Path, step: int = STEPS, run: str = "t") -> dict:
    return tensors.read_state(workdir / "runs" / run / ckpt.dir_name(step))


def copy_checkpoint(run: Path, into: Path, step: int) -> None:
    """A run that stopped at `step`, without training it again: `run`'s checkpoint of that
    step in a run folder of its own (which spotray adopts though Ray never registered it
    there: spotray.runtime.checkpoint)."""
    shutil.copytree(run / ckpt.dir_name(step), into / ckpt.dir_name(step))


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"parameter {key} differs"
    for state_a, state_b in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(state_a["exp_avg"], state_b["exp_avg"])
        assert torch.equal(state_a["exp_avg_sq"], state_b["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"]


def assert_same_trajectory(a: dict, b: dict, atol: float = 2e-5) -> None:
    """Equal up to float32 summation order, as runs on different world sizes are when every
    world size cuts the global batch into the same micro-batches.

    The runs then add the same micro-batch gradients in a different order (one rank's
    accumulation vs. several ranks' all-reduce), so they differ by float32 rounding (~1e-7
    relative per step); Adam's normalisation and 120 steps amplify that to ~1e-5 on the
    weights. `atol` (2e-5 by default, as docs/how-it-works.md states; measured 6.4e-7 on the
    weights and 7e-8 on AdamW's moments for 3 -> 2 -> 3 -> 1 workers of TEST_CONFIG) applies
    to the weights and to both AdamW moments; a real divergence (a different batch order)
    moves weights by ~1e-2 within a few steps. Micro-batches cut
    differently (16 sequences as 8+8 on 2 ranks but 5+5+6 on 3) change the sums inside each
    forward pass too, and Adam turns that noise on rarely used embedding rows into ~1e-2:
    measured 1.3e-2 between uninterrupted 2- and 3-worker runs of TEST_CONFIG.

    One slice is left out: the key part of each attention bias. Softmax does not change when
    the same number is added to every score of a query, so the model's output does not
    depend on the key bias and its true gradient is zero; what it gets is rounding noise,
    which Adam scales up to learning-rate-sized steps. Summed in another order, that noise
    differs: measured 8e-4 on it between a 3 -> 2 -> 3 -> 1-worker run and an uninterrupted
    3-worker one, where every other weight stayed within 2e-5.
    """
    assert a["model"].keys() == b["model"].keys()
    pairs = [(key, a["model"][key], b["model"][key]) for key in b["model"]]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in b["optimizer"]["state"].items():
        name = key if isinstance(key, str) else list(b["model"])[key]
        for moment in ("exp_avg", "exp_avg_sq"):
            pairs.append((f"{name} {moment}", a["optimizer"]["state"][key][moment], state[moment]))
    for key, x, y in pairs:
        if ("attn.qkv.bias" in key or "attn.c_attn.bias" in key) and x.dim() == 1:  # drop the key third
            width = y.shape[0] // 3
            x, y = torch.cat([x[:width], x[2 * width :]]), torch.cat([y[:width], y[2 * width :]])
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=lambda m, key=key: f"{key}: {m}")
    assert a["scheduler"] == b["scheduler"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """An uninterrupted 2-worker run."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_spotray(["train", str(write_config(workdir))], cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir, result


MOTO_ACCOUNT = "123456789012"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto in server mode on 127.0.0.1, in this process (so a test can reach its backends);
    fake credentials and AWS_ENDPOINT_URL in the environment. Yields the endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto's backends live in this process and outlast a server: start each test from nothing.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    forget_ray_aws_clients()
    for key, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    try:
        yield endpoint
    finally:
        server.stop()


def forget_ray_aws_clients() -> None:
    """Ray's launcher caches boto3 clients and node providers for the life of the process;
    a cached one still points at the previous test's moto server."""
    from ray.autoscaler._private import providers
    from ray.autoscaler._private.aws import config, utils

    utils.resource_cache.cache_clear()
    utils.client_cache.cache_clear()
    config._get_subnets_or_die.cache_clear()
    providers._provider_instances.clear()


@pytest.fixture
def cluster_yaml_on_moto(moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cluster.yaml filled in for moto: its instance profiles exist (spotray's, from its policy
    files), its AMI is one of moto's."""
    import boto3
    import yaml

    from spotray.cluster import iam

    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes the SSH key it creates under ~/.ssh
    image = boto3.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    text = (REPO / "cluster.yaml").read_text().replace("YOUR-ACCOUNT", MOTO_ACCOUNT)
    path = tmp_path / "cluster.yaml"
    path.write_text(text.replace("latest_dlami", image))
    config = yaml.safe_load(path.read_text())
    profiles = iam.profiles(config)
    names = [profiles.head, profiles.workers]
    iam.create(profiles, names, boto3.client("iam"), account=MOTO_ACCOUNT, cluster="spotray", bucket="ckpt")
    return path
