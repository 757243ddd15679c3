"""`spotray up`, `down`, `status`, `dashboard` and `watch`: parse, call spotray.cluster, render."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from spotray.cli.app import command
from spotray.errors import ConfigError, SpotrayError
from spotray.terminal import console, err_console, human_errors

if TYPE_CHECKING:
    from spotray.cluster.aws import ClusterPlan


ClusterYaml = Annotated[
    Path | None,
    typer.Argument(
        help="Ray cluster launcher config (default cluster.yaml, or cluster.local.yaml with --local)."
    ),
]
RemoteYaml = Annotated[
    Path | None,
    typer.Argument(help="An AWS cluster's launcher config, reached over SSH (default: the local cluster)."),
]
LocalOption = Annotated[
    bool, typer.Option("--local", help="The local cluster of fake nodes (cluster.local.yaml), not AWS.")
]


def _cluster_yaml(path: Path | None, local: bool) -> Path:
    return path or Path("cluster.local.yaml" if local else "cluster.yaml")


@command
def up(
    cluster_yaml: ClusterYaml = None,
    local: LocalOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and print the plan; launch nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before launching.")] = False,
    ledger_path: Annotated[
        Path | None, typer.Option("--ledger", envvar="SPOTRAY_LEDGER", help="Cost ledger file.")
    ] = None,
    create_iam: Annotated[
        bool,
        typer.Option(
            "--create-iam",
            help="Create the instance profiles the file names that do not exist yet, from the "
            "least-privilege policies in spotray/cluster/iam/ (needs --bucket).",
        ),
    ] = False,
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="With --create-iam: the checkpoint bucket's name.")
    ] = None,
    spot_capacity: Annotated[
        int | None,
        typer.Option(
            "--spot-capacity",
            min=0,
            help="With --local: at most N fake nodes of each spot type, as if AWS had no more "
            "(0: none). On a local cluster that is up, changes only that.",
        ),
    ] = None,
) -> None:
    """Check the cluster config against AWS, print the plan and its price, bring it up.

    Checks before anything launches: the config as Ray itself validates it, the region, every
    instance type, a subnet in every AZ, and the two instance profiles (--create-iam makes
    missing ones from the least-privilege policies in spotray/cluster/iam/). The plan shows each node
    type's market, its on-demand and current spot prices, and the most the cluster can cost
    per hour. Then `up` creates the cluster's Ray token if this machine has none
    (~/.ray/auth_token; the nodes run Ray with RAY_AUTH_MODE=token), Ray's cluster launcher
    brings it up and the cost ledger records it. --dry-run works without AWS credentials:
    the plan from the bundled on-demand table, and a line listing what it could not check.

    With --local: a head on this machine running Ray's real autoscaler over
    cluster.local.yaml's fake node types; jobs that ask for workers make it add nodes.

    [b]Examples:[/b]

      spotray up cluster.yaml --dry-run

      spotray up cluster.yaml --create-iam --bucket my-checkpoints

      spotray up cluster.yaml --yes

      spotray up --local        # fake nodes on this machine, no AWS

      spotray up --local --spot-capacity 0   # the spot pool runs dry
    """
    cluster_yaml = _cluster_yaml(cluster_yaml, local)
    if local:
        with human_errors():
            _up_local(cluster_yaml, ledger_path, spot_capacity)
        return
    with human_errors():
        if spot_capacity is not None:
            raise ConfigError("--spot-capacity is for --local clusters: AWS decides real spot capacity")
        _up_aws(cluster_yaml, dry_run, yes, ledger_path, create_iam, bucket)


def _up_aws(
    cluster_yaml: Path,
    dry_run: bool,
    yes: bool,
    ledger_path: Path | None,
    create_iam: bool,
    bucket: str | None,
) -> None:
    from spotray.cluster import aws, iam, lifecycle
    from spotray.cluster.auth import ensure_token
    from spotray.cost.aws import NoCredentialsError, client
    from spotray.cost.prices import load_on_demand

    if create_iam and not bucket:
        raise ConfigError("--create-iam needs --bucket BUCKET: the checkpoint bucket its policies allow")
    config = aws.load_cluster_config(cluster_yaml)
    region = config["provider"]["region"]
    profiles = iam.profiles(config)
    try:
        ec2, iam_client = client("ec2", region), client("iam", region)
    except NoCredentialsError:
        if not dry_run:
            raise
        ec2 = iam_client = None
    plan = aws.preflight(config, ec2, load_on_demand())
    _print_plan(plan)
    gone = iam.missing(profiles, iam_client) if iam_client else []
    if gone and not create_iam:
        raise SpotrayError(
            f"instance profile(s) {', '.join(gone)} do not exist: `spotray up --create-iam --bucket "
            "BUCKET` creates them from spotray/cluster/iam/*.json (or create them by hand from those files)"
        )
    if dry_run:
        if plan.unchecked:
            console.print("no AWS credentials; not checked: " + "; ".join(plan.unchecked))
        if gone:
            console.print(f"would create instance profile(s) {', '.join(gone)} (--create-iam)")
        return
    if not yes:
        typer.confirm("Launch it?", abort=True)
    if gone:
        account = client("sts", region).get_caller_identity()["Account"]
        iam.create(profiles, gone, iam_client, account=account, cluster=plan.name, bucket=bucket or "")
        console.print(f"created instance profile(s) {', '.join(gone)} for bucket {bucket}")
    token, created = ensure_token()
    if created:
        console.print(f"created the cluster's Ray token: {token} (keep it private)")
    lifecycle.up_aws(cluster_yaml, plan, ledger_path)
    console.print(f"[green]up[/]: {plan.name}. Costs so far: spotray cost --cluster {plan.name}")


def _print_plan(plan: ClusterPlan) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"cluster {plan.name} in {plan.region}", box=box.SIMPLE_HEAD)
    for col in ("node type", "instance", "market", "workers", "on-demand $/h"):
        table.add_column(col, no_wrap=True)
    table.add_column("spot $/h now")  # the one column that may wrap in a narrow terminal
    for node in [plan.head, *plan.workers]:
        prices = sorted(node.spot_prices.values())
        spot = f"{prices[0]:.4f}-{prices[-1]:.4f} ({len(prices)} AZs)" if prices else ""
        workers = "head" if node is plan.head else f"{node.min_workers}-{node.max_workers}"
        spot_cell = spot or ("no price read" if node.market == "spot" else "")
        table.add_row(
            node.name, node.instance_type, node.market, workers, f"{node.on_demand_price:.3f}", spot_cell
        )
    console.print(table)
    console.print(
        f"at most [bold]${plan.max_usd_per_hour():,.2f}/h[/] (the head and the dearest worker mix "
        f"within max_workers {plan.max_workers})"
    )


@command
def down(
    cluster_yaml: ClusterYaml = None,
    local: LocalOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before tearing down.")] = False,
    ledger_path: Annotated[
        Path | None, typer.Option("--ledger", envvar="SPOTRAY_LEDGER", help="Cost ledger file.")
    ] = None,
) -> None:
    """Close the cluster's nodes in the cost ledger, then tear every node down.

    The ledger is finalized first (every node still running is recorded as torn down now), so
    the bill is complete even if the teardown is interrupted; it stays after the cluster.
    With --local: stops the local cluster's processes, and only those (never `ray stop`).

    [b]Examples:[/b]

      spotray down cluster.yaml --yes

      spotray down --local
    """
    if local:
        with human_errors():
            _down_local(cluster_yaml, ledger_path)
        return
    cluster_yaml = _cluster_yaml(cluster_yaml, local)
    with human_errors():
        from spotray.cluster import aws, lifecycle
        from spotray.cost.aws import client

        config = aws.load_cluster_config(cluster_yaml)
        name = config["cluster_name"]
        if not yes:
            typer.confirm(f"Tear down every node of {name}?", abort=True)
        ec2 = client("ec2", config["provider"]["region"])
        done = lifecycle.down_aws(config, cluster_yaml, ec2, ledger_path)
        console.print(f"[green]down[/]: {name}; {done.closed} node(s) closed in the ledger ({done.ledger})")
        console.print(f"the bill stays: spotray cost --cluster {name} --offline")


@command
def status(
    cluster_yaml: RemoteYaml = None,
    local: LocalOption = False,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="GCS address (HOST:PORT, or auto on a cluster node) to read directly."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    ledger_path: Annotated[
        Path | None, typer.Option("--ledger", envvar="SPOTRAY_LEDGER", help="Cost ledger file.")
    ] = None,
) -> None:
    """The cluster now: its nodes, its runs, preemptions and cost so far.

    Nodes: type, market, AZ, uptime, $/h, draining. Runs: step, last checkpoint, steps lost.

    Without arguments: the local cluster of `spotray up --local`.

    With CLUSTER_YAML: `spotray status` on that cluster's head (Ray's `ray exec`, over SSH).

    [b]Examples:[/b]

      spotray status                      # the local cluster

      spotray status cluster.yaml         # an AWS cluster, read on its head

      spotray status --address auto --json
    """
    with human_errors():
        if cluster_yaml is not None and not local and address is None:
            raise typer.Exit(
                _on_head(cluster_yaml, "spotray status --address auto" + (" --json" if as_json else ""))
            )
        from spotray.cluster.auth import use_token_auth_if_available

        use_token_auth_if_available()  # before Ray is imported
        import json

        from spotray.cluster.status import read_status, render
        from spotray.cost.ledger import Ledger, current_cluster

        if address is None:
            from spotray.cluster.local import load_state

            found = load_state(_local_name(cluster_yaml))
            address, name = found.gcs_address, found.name
        else:
            address, name = _gcs_address(address), current_cluster()
        with Ledger(ledger_path) as ledger:
            try:
                now = read_status(address, name, ledger)
            except Exception as err:  # GCS down or unreachable: Ray raises several kinds
                raise SpotrayError(
                    f"cannot read the cluster at {address}: {str(err).splitlines()[0]}"
                ) from None
        if as_json:
            print(json.dumps(now.as_dict(), indent=2))
        else:
            render(now, console)


@command
def dashboard(
    cluster_yaml: RemoteYaml = None,
    local: LocalOption = False,
    port: Annotated[int, typer.Option("--port", help="Local port for the forwarded dashboard.")] = 8265,
) -> None:
    """Where to open the Ray dashboard (spotray's gauges are in its Metrics view).

    Local cluster: prints its URL.

    AWS cluster: forwards the head's dashboard to localhost:PORT over SSH until Ctrl-C.

    [b]Examples:[/b]

      spotray dashboard                 # the local cluster's URL

      spotray dashboard cluster.yaml    # then open http://127.0.0.1:8265
    """
    with human_errors():
        if cluster_yaml is None or local:
            from spotray.cluster.local import load_state

            found = load_state(_local_name(cluster_yaml))
            console.print(f"{found.dashboard_url}   (metrics: {found.metrics_url})", highlight=False)
            return
        console.print(f"forwarding {cluster_yaml}'s dashboard to http://127.0.0.1:{port} (Ctrl-C stops)")
        raise typer.Exit(_run_ray(["dashboard", str(cluster_yaml), "--port", str(port)]))


def _local_name(cluster_yaml: Path | None) -> str | None:
    import yaml

    if cluster_yaml is None:
        return None
    return yaml.safe_load(_existing(cluster_yaml).read_text())["cluster_name"]


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    return path


def _gcs_address(address: str) -> str:
    if address != "auto":
        return address
    from spotray.ray_compat.node import local_gcs_address

    found = local_gcs_address()
    if not found:
        raise SpotrayError("no Ray cluster runs on this machine (--address auto found none)")
    return found


def _run_ray(args: list[str]) -> int:
    """Ray's own CLI, from this environment (it owns SSH and the port-forward)."""
    import subprocess

    ray = Path(sys.executable).with_name("ray")
    return subprocess.call([str(ray) if ray.exists() else "ray", *args])


def _on_head(cluster_yaml: Path, command: str) -> int:
    return _run_ray(["exec", str(_existing(cluster_yaml)), command])


def _up_local(cluster_yaml: Path, ledger_path: Path | None, spot_capacity: int | None) -> None:
    from spotray.cluster import lifecycle
    from spotray.cluster.local import is_up, load_state, set_spot_capacity

    name = _local_name(cluster_yaml)
    if spot_capacity is not None and name and is_up(name):
        types = set_spot_capacity(load_state(name), spot_capacity)
        console.print(
            f"{name}: at most {spot_capacity} node(s) of each spot type ({', '.join(types)}); "
            "the autoscaler applies it at its next update"
        )
        return
    with console.status("starting the head and the autoscaler..."):
        cluster = lifecycle.up_local(_existing(cluster_yaml), ledger_path, spot_capacity)
    console.print(f"[green]up[/]: {cluster.name}, on this machine (fake nodes, added as jobs ask for them)")
    for key, value in (
        ("dashboard", cluster.dashboard_url),
        ("ray address", cluster.gcs_address),
        ("metrics", cluster.metrics_url),
    ):
        console.print(f"  {key:<12}{value}", highlight=False)
    console.print("train on it:  spotray train train/configs/local-cluster.yaml --address local")
    console.print("look at it:   spotray status --local      stop it: spotray down --local")


def _down_local(cluster_yaml: Path | None, ledger_path: Path | None) -> None:
    from spotray.cluster.auth import use_token_auth_if_available

    use_token_auth_if_available()  # before Ray is imported
    from spotray.cluster import lifecycle
    from spotray.cluster.local import load_state

    cluster = load_state(_local_name(cluster_yaml))
    with console.status(f"stopping {cluster.name}..."):
        done = lifecycle.down_local(cluster, ledger_path)
    if done.warning:
        err_console.print(f"[yellow]warning:[/] {done.warning}")
    console.print(
        f"[green]down[/]: {done.name}; {done.stopped} process(es) stopped, {done.closed} node(s) closed"
    )


@command
def watch(
    imds_url: Annotated[
        str, typer.Option("--imds-url", envvar="SPOTRAY_IMDS_URL", help="Instance metadata service.")
    ] = "http://169.254.169.254",
    address: Annotated[
        str, typer.Option("--address", envvar="RAY_ADDRESS", help="Ray GCS address (HOST:6379), or auto.")
    ] = "auto",
    node_id: Annotated[
        str | None,
        typer.Option("--node-id", help="Ray node to drain (default: the node this process runs on)."),
    ] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = 1.0,
    rebalance: Annotated[
        str,
        typer.Option(
            "--rebalance",
            help="On a rebalance recommendation: checkpoint (ask for an early checkpoint), drain, or ignore.",
        ),
    ] = "checkpoint",
) -> None:
    """Watch this instance's metadata for spot interruption notices and drain its Ray node.

    Runs on every worker node (cluster.yaml starts it next to `ray start`). A notice drains
    the node with reason PREEMPTION and the notice's time as the deadline, once; Ray Train
    then checkpoints and moves the job off the node. IMDS errors are logged and retried,
    never acted on.

    [b]Examples:[/b]

      spotray watch                                  # on an EC2 worker node

      spotray watch --imds-url http://127.0.0.1:8111 \\
        --address 127.0.0.1:6379 --node-id abc...
    """
    with human_errors():
        import logging
        import signal
        import threading

        from spotray.spot.imds import IMDSClient
        from spotray.spot.watch import NoticePolicy, RayNode, RebalanceAction, Watcher

        try:
            policy = NoticePolicy(RebalanceAction(rebalance))
        except ValueError:
            choices = ", ".join(a.value for a in RebalanceAction)
            raise ConfigError(f"--rebalance must be one of {choices}, got {rebalance!r}") from None
        from spotray.cluster.auth import use_token_auth_if_available
        from spotray.spot.watch import wait_for_gcs

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        stop = threading.Event()

        def stop_on_signals() -> None:  # again after ray.init, which installs its own
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())

        stop_on_signals()
        use_token_auth_if_available()  # before Ray is imported, as `status` and `down` do
        if not wait_for_gcs(address, stop):
            return  # stopped while the GCS was out of reach
        gcs, node = connect_to_node(address, node_id)
        stop_on_signals()
        watcher = Watcher(IMDSClient(imds_url), RayNode(gcs, node), policy, interval_s=interval)
        console.print(f"watching {imds_url} for node {node} (every {interval:g} s)", soft_wrap=True)
        watcher.run(stop)


def connect_to_node(address: str, node_id: str | None) -> tuple[str, str]:
    """(GCS address, node id): connects to Ray so the notice counter reaches its metrics."""
    import ray

    try:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING", namespace="spotray")
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SpotrayError(f"cannot connect to Ray at {address}: {str(err).splitlines()[0]}") from None
    gcs = ray.get_runtime_context().gcs_address
    node = node_id or ray.get_runtime_context().get_node_id()
    known = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    if node not in known:
        raise ConfigError(f"--node-id {node} is not a live node of the cluster at {gcs}")
    return gcs, node
