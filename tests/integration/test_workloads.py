"""spotray's guarantees for a workload it has never seen, sharded: the Hugging Face example,
copied into a folder of its own and run from there as a user runs theirs, with
`scaling.strategy: fsdp` (the built-in GPT's tests run under DDP).

Exact resume (started again from a checkpoint, a worker SIGKILLed), 0 steps lost to an announced
preemption, the elastic 3 -> 2 -> 3 trajectory, and a resume on another world size from a
sharded checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from tests.conftest import REPO, deep_merge, run_spotray, spotray_env
from tests.integration.conftest import assert_bit_identical, assert_same_trajectory, copy_checkpoint
from tests.integration.faults import complete_checkpoint, train_killing_a_worker

pytestmark = pytest.mark.integration
pytest.importorskip("transformers", reason="the hf extra: pip install 'spotray[hf]'")

STEPS = 60
HF_JOB: dict[str, Any] = {
    "name": "hf",
    "seed": 3,
    "workload": {
        "entrypoint": "hf_lm:HFCausalLM",
        "args": {"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32},
    },
    # 24 in micro-batches of 4: 1, 2 and 3 workers cut it into the same micro-batches.
    "optimizer": {
        "global_batch_size": 24,
        "micro_batch_size": 4,
        "steps": STEPS,
        "lr": 3e-3,
        "warmup_steps": 5,
    },
    "scaling": {"min_workers": 2, "max_workers": 2, "strategy": "fsdp"},
    "checkpoint": {"storage_path": "./runs", "interval": 10, "keep": 10},
    "failure": {"max_failures": 2},
}


def hf_folder(folder: Path, update: dict[str, Any] | None = None) -> Path:
    """The user's folder: their workload module and their job.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "examples" / "hf_lm" / "hf_lm.py", folder / "hf_lm.py")
    (folder / "job.yaml").write_text(yaml.safe_dump(deep_merge(HF_JOB, update or {})))
    return folder


def state(folder: Path, step: int = STEPS, run: str = "hf") -> dict:
    return tensors.read_state(folder / "runs" / run / ckpt.dir_name(step))


def meta(folder: Path, step: int = STEPS) -> dict:
    return json.loads((folder / "runs" / "hf" / ckpt.dir_name(step) / ckpt.META_FILE).read_text())


def train(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_spotray(["train", "job.yaml", *args], cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-worker run of the Hugging Face workload, sharded."""
    folder = hf_folder(tmp_path_factory.mktemp("hf-reference"))
    result = train(folder)
    assert f"done: hf at step {STEPS}" in result.stdout
    assert meta(folder)["loss"] < meta(folder, 10)["loss"] - 0.3, "it learns"
    return folder


def test_started_again_and_a_killed_worker_end_exactly_as_one_run(hf_reference: Path, tmp_path: Path) -> None:
    """A run that stopped at step 30 (the reference's checkpoint 30 in a run folder of its
    own), started again, with a worker SIGKILLed after checkpoint 40: the run ends as the
    uninterrupted one (the loss in spotray.json float-equal, every tensor bit-identical)."""
    folder = hf_folder(tmp_path / "mine")
    copy_checkpoint(hf_reference / "runs" / "hf", folder / "runs" / "hf", 30)
    checkpoint_40 = complete_checkpoint(folder / "runs" / "hf", 40)
    text = train_killing_a_worker(["job.yaml"], folder, spotray_env(), checkpoint_40, "checkpoint 40")
    assert "started from step 30" in text
    assert "restart 1: from step" in text
    assert meta(folder)["loss"] == meta(hf_reference)["loss"]
    assert_bit_identical(state(folder), state(hf_reference))


def test_sharded_on_two_workers_resumes_on_one(hf_reference: Path, tmp_path: Path) -> None:
    """FSDP on 2 workers writes a DCP checkpoint (an index and one shard per rank); a run
    that stopped there (the reference's checkpoint 20) resumes on 1 worker and ends at its
    last step."""
    names = sorted(p.name for p in (hf_reference / "runs" / "hf" / ckpt.dir_name(20)).iterdir())
    assert tensors.METADATA_FILE in names
    assert [n for n in names if n.endswith(".distcp")] == [tensors.shard_file(0), tensors.shard_file(1)]

    folder = hf_folder(tmp_path / "mine", {"scaling": {"min_workers": 1, "max_workers": 1}})
    copy_checkpoint(hf_reference / "runs" / "hf", folder / "runs" / "hf", 20)
    said = " ".join(train(folder).stdout.split())
    assert "started from step 20 (complete in storage, not yet registered by Ray) on 1 worker(s)" in said
    assert f"done: hf at step {STEPS}" in said
    assert meta(folder)["world_size"] == 1 and meta(folder)["step"] == STEPS
    assert meta(folder)["loss"] < meta(folder, 20)["loss"], "it goes on learning"


def test_announced_preemption_and_elastic_three_two_three(tmp_path: Path) -> None:
    """3 workers -> 2 (announced: 0 steps lost) -> 3 (a node added: the job grows) -> 2 (a
    node killed without notice), ending where an uninterrupted 3-worker run does."""
    # Long enough for the growth (~15 s from the node joining) to land while it trains.
    steps = {"optimizer": {"steps": 130}}
    fixed = hf_folder(tmp_path / "fixed", {**steps, "scaling": {"min_workers": 3, "max_workers": 3}})
    train(fixed)

    elastic = {
        **steps,
        "scaling": {"min_workers": 1, "max_workers": 3, "grow_payback_restarts": 0},
        "failure": {"max_failures": 1},
    }
    folder = hf_folder(tmp_path / "elastic", elastic)
    args = ["chaos", "job.yaml", "--nodes", "3", "--no-replace", "--report", "report.json", "--lead-s", "6"]
    args += [
        "--slow-step-s",
        "0.2",
        "--event",
        "15:announced",
        "--event",
        "30:add",
        "--event",
        "45:unannounced",
    ]
    result = run_spotray(
        args, cwd=folder, env=spotray_env(SPOTRAY_LEDGER=str(tmp_path / "ledger.db")), timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((folder / "report.json").read_text())
    assert report["final_step"] == 130
    announced, grow, shrink = report["events"]
    assert announced["steps_lost"] == 0 and announced["workers_after"] == 2, announced
    # It trained on through the lead and checkpointed again before the kill. (How far it got
    # depends on the pace: on 2 cores shared with the new nodes' warm spares, 22-30.)
    assert announced["resumed_step"] == announced["checkpoint_before_kill"] > announced["step_at_notice"]
    assert grow["workers_after"] == 3, grow
    assert shrink["workers_after"] == 2, shrink
    starts = [e for e in report["hub_events"] if e["kind"] == "start"]
    assert [e["world_size"] for e in starts] == [3, 2, 3, 2]
    for start in starts:  # each group's first step is the one after its checkpoint
        first = min((t, step) for t, step in report["steps"] if t >= start["time"])
        assert first[1] == start["step"] + 1, (start, first)
    # The HF model under FSDP is held to 1e-4 (its measured spread is not recorded here).
    assert_same_trajectory(state(folder, 130, run="hf-chaos"), state(fixed, 130), atol=1e-4)
