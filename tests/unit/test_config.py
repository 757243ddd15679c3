"""A bad config ends with exit code 2 and one line naming the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from spotray.config import JobConfig, parse_config
from spotray.errors import ConfigError
from tests.conftest import TEST_CONFIG, deep_merge, run_spotray, write_config

# 307 bytes whose aliases stand for 54 million values.
BILLION_LAUGHS = "".join(
    f"{k}: &{k} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, k in zip(["", *"abcdefg"], "abcdefgh", strict=True)
).replace("h: &h", "name:")

BAD_CONFIGS = [
    # (what, config update or raw text, words the error must contain)
    ("unknown top-level key", {"epochs": 3}, ["epochs", "unknown key"]),
    ("unknown nested key", {"optimizer": {"learning_rate": 0.1}}, ["optimizer.learning_rate", "unknown key"]),
    ("wrong type", {"optimizer": {"steps": "many"}}, ["optimizer.steps", "integer", "'many'"]),
    ("negative lr", {"optimizer": {"lr": -0.1}}, ["optimizer.lr", "greater than 0", "-0.1"]),
    ("min above max", {"scaling": {"min_workers": 3, "max_workers": 2}}, ["scaling", "min_workers (3)"]),
    ("min_lr above lr", {"optimizer": {"lr": 1e-4, "min_lr": 1e-3}}, ["optimizer", "min_lr"]),
    ("bad interval", {"checkpoint": {"interval": "often"}}, ["checkpoint.interval", "'auto'", "'often'"]),
    ("zero interval", {"checkpoint": {"interval": 0}}, ["checkpoint.interval", "positive"]),
    ("infinite lr", {"optimizer": {"lr": float("inf")}}, ["optimizer.lr", "finite"]),
    ("old form", {"model": {"preset": "tiny"}}, ["model moved into the workload", "workload.args"]),
    ("entrypoint form", {"workload": {"entrypoint": "train.gpt"}}, ["workload.entrypoint", "pattern"]),
    ("no such attribute", {"workload": {"entrypoint": "train.gpt:Missing"}}, ["Missing", "no attribute"]),
    ("no such module", {"workload": {"entrypoint": "no_such_pkg.mod:W"}}, ["cannot import no_such_pkg.mod"]),
    (
        "not a workload",
        {"workload": {"entrypoint": "train.model:GPT"}},
        ["GPT is not a subclass of spotray.Workload"],
    ),
    ("args not taken", {"workload": {"args": {"width": 64}}}, ["GPTWorkload", "workload.args", "'width'"]),
    (
        "missing data file",
        {"workload": {"args": {"source": "no/such/file.txt"}}},
        ["GPTWorkload", "no such file"],
    ),
    ("unknown preset", {"workload": {"args": {"preset": "gpt5"}}}, ["GPTWorkload", "'gpt5'"]),
    ("heads do not divide", {"workload": {"args": {"n_head": 3}}}, ["GPTWorkload", "divisible"]),
    ("batch below workers", {"optimizer": {"global_batch_size": 1}}, ["global_batch_size", "max_workers"]),
    ("bad name", {"name": "../escape"}, ["name", "pattern"]),
    ("bad s3 endpoint", {"s3": {"endpoint_url": "127.0.0.1:9000"}}, ["s3.endpoint_url", "http://"]),
    (
        "fallback without a spot marker",
        {"scaling": {"on_demand_after_s": 600}},
        ["scaling", "on_demand_after_s", "resources_per_worker"],
    ),
    (
        "fallback on the spot marker",
        {
            "scaling": {
                "on_demand_after_s": 600,
                "resources_per_worker": {"spot_gpu_node": 1},
                "on_demand_resources_per_worker": {"spot_gpu_node": 1},
            }
        },
        ["scaling", "on_demand_resources_per_worker", "of its own"],
    ),
    ("fallback wait not positive", {"scaling": {"on_demand_after_s": 0}}, ["scaling.on_demand_after_s"]),
    (
        "model beyond this machine",
        {"workload": {"args": {"n_embd": 1_000_000}}},
        ["the model has", "000,000 parameters (", "GB in fp32", "GB free to build it"],
    ),
    (
        "workers beyond this machine",
        {
            "scaling": {"max_workers": 10_000},
            "optimizer": {"global_batch_size": 10_000, "micro_batch_size": 1},
        },
        ["10000 worker(s) on this machine need about", "lower scaling.max_workers"],
    ),
    (
        "unknown strategy",
        {"scaling": {"strategy": "zero3"}},
        ["scaling.strategy", "'ddp' or 'fsdp'", "'zero3'"],
    ),
]


def train_here(path: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Result:
    """`spotray train PATH` in this process (typer's runner): each case fails before Ray
    starts, and a subprocess per case cost CI ~3.5 s each. The real process exit is covered
    by test_malformed_file."""
    from spotray.cli import app

    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, ["train", str(path)])


@pytest.mark.parametrize("what,update,words", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, update: dict, words: list[str]
) -> None:
    path = write_config(tmp_path, update)
    result = train_here(path, tmp_path, monkeypatch)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.parametrize(
    "text,words",
    [
        ("name: t\noptimizer: {lr: 0.1\n", ["invalid YAML", ":3:1"]),
        ("- just\n- a list\n", ["mapping"]),
        ("seed: 1\n", ["name", "required"]),
        ("name: t\n", ["workload", "required"]),
        (BILLION_LAUGHS, ["aliases expand to 54,481,013 values"]),
    ],
    ids=["yaml syntax", "not a mapping", "missing name", "missing workload", "billion laughs"],
)
def test_malformed_file(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_spotray(["train", str(path)], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    for word in words:
        assert word in result.stderr
    for word in words:
        assert word in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    result = run_spotray(["train", "nope.yaml"], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "nope.yaml: no such file" in result.stderr


def test_shipped_configs_are_valid() -> None:
    from spotray.config import load_config
    from spotray.workload import check_args, resolve_class

    repo = Path(__file__).resolve().parents[2]
    paths = sorted([*(repo / "train" / "configs").glob("*.yaml"), *(repo / "examples").glob("*/job.yaml")])
    assert len(paths) >= 6
    for path in paths:
        cfg = load_config(path)
        cls = resolve_class(cfg.workload.entrypoint, str(path.parent))
        check_args(cls, cfg.workload.entrypoint, cfg.workload.args)


def test_trajectory_ignores_where_it_runs() -> None:
    a = parse_config(TEST_CONFIG)
    b = parse_config(deep_merge(TEST_CONFIG, {"scaling": {"min_workers": 1, "max_workers": 4}}))
    c = parse_config(deep_merge(TEST_CONFIG, {"optimizer": {"lr": 1e-3}}))
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()


def test_parse_config_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError):
        parse_config([1, 2])
    workload = {"entrypoint": "train.gpt:GPTWorkload"}
    assert isinstance(parse_config({"name": "x", "workload": workload}), JobConfig)


def test_the_ray_token_goes_over_plain_http_only_to_this_machine(tmp_path: Path) -> None:
    """A token on this machine and --address http://<another host>: refused before anything
    is sent, with the ways out."""
    from tests.conftest import spotray_env

    token = tmp_path / "auth_token"
    token.write_text("secret")
    env = spotray_env(RAY_AUTH_TOKEN_PATH=str(token))
    env.pop("RAY_AUTH_MODE", None)
    path = write_config(tmp_path)
    result = run_spotray(
        ["train", str(path), "--address", "http://192.0.2.7:8265"], cwd=tmp_path, env=env, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: refusing to send the Ray token over plain http to 192.0.2.7: use https://, an SSH tunnel "
        "to 127.0.0.1 (`spotray dashboard`), or --insecure"
    )


def test_a_huge_value_is_cut_to_200_characters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, {"name": [["x" * 5000] * 100] * 100})
    result = train_here(path, tmp_path, monkeypatch)
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "name: Input should be a valid string (got [['xxx" in line and len(line) < 400, line
