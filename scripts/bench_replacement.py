"""When does Ray's autoscaler start a replacement for a spot node that got its notice?

    python scripts/bench_replacement.py                 # v1 and v2, 3 runs each (~5 min)
    python scripts/bench_replacement.py --repeats 1 --markdown

spotray's watcher drains a node when AWS posts its two-minute notice. Whether the
replacement starts booting then, or only after AWS has taken the node, is up to Ray's
autoscaler, and its two versions differ:

- v1 (`ray start --autoscaling-config`, what `spotray up --local` runs) launches a node for
  demand that does not fit; a draining node still counts as capacity until it is gone.
- v2 (what `ray up` starts on AWS in Ray 2.60) does not schedule onto a draining node, so
  the job's standing resource request (Ray Train registers one with the autoscaling
  coordinator for its workers) no longer fits, and a node is launched at once.

Each run brings up cluster.local.yaml's fake nodes (real raylets) with one version, holds
two spot nodes with actors and a resource request for both (what a running 2-worker job
looks like to the autoscaler), drains one of them with reason PREEMPTION and a deadline
`--deadline-s` ahead (what `spotray watch` does with a notice), and measures the seconds
from the drain to a new spot node registering, if one does before the deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPOT_TYPE = "p3_8xlarge_spot"


def trial(version: str, deadline_s: float) -> dict:
    """One cluster, one drain; runs in its own process (a fresh Ray driver)."""
    os.environ["SPOTRAY_HOME"] = tempfile.mkdtemp(prefix="bench-replacement-")
    os.environ["AUTOSCALER_UPDATE_INTERVAL_S"] = "1"  # Ray's tests' setting; default 5 s
    from spotray.cluster.auth import use_token_auth_if_available
    from spotray.cluster.local import down_local, up_local
    from spotray.spot.watch import Drain, RayNode

    config = yaml.safe_load((ROOT / "cluster.local.yaml").read_text())
    config["cluster_name"] = f"bench-replacement-{version}"
    config["available_node_types"][SPOT_TYPE]["max_workers"] = 3  # room for the replacement
    path = Path(os.environ["SPOTRAY_HOME"]) / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    use_token_auth_if_available()
    import ray
    from ray.autoscaler.sdk import request_resources

    cluster = up_local(path, autoscaler_v2=version == "v2")
    try:
        ray.init(address=cluster.gcs_address, log_to_driver=False)
        request_resources(bundles=[{"spot_gpu_node": 1}] * 2)

        @ray.remote(num_cpus=0, resources={"spot_gpu_node": 1})
        class Worker:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        workers = [Worker.remote() for _ in range(2)]
        held = ray.get([w.node.remote() for w in workers], timeout=120)

        def spot_nodes() -> set[str]:
            return {n["NodeID"] for n in ray.nodes() if n["Alive"] and "spot_gpu_node" in n["Resources"]}

        before = spot_nodes()
        drained = time.time()
        RayNode(cluster.gcs_address, held[0]).drain(Drain(int((drained + deadline_s) * 1000), "bench"))
        while time.time() < drained + deadline_s:
            if spot_nodes() - before:
                return {"version": version, "replacement_s": round(time.time() - drained, 2)}
            time.sleep(0.25)
        return {"version": version, "replacement_s": None}
    finally:
        ray.shutdown()
        down_local(cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deadline-s", type=float, default=30.0, help="the drain's deadline (the lead)")
    parser.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md row per version")
    parser.add_argument("--trial", choices=["v1", "v2"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        print(json.dumps(trial(args.trial, args.deadline_s)))
        return
    results: dict[str, list[float | None]] = {"v1": [], "v2": []}
    for i in range(args.repeats):
        for version in results:
            print(f"[{i + 1}/{args.repeats}] autoscaler {version}: drain a busy spot node ...", flush=True)
            cmd = [sys.executable, __file__, "--trial", version, "--deadline-s", str(args.deadline_s)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"trial failed:\n{done.stderr[-3000:]}")
            took = json.loads(done.stdout.strip().splitlines()[-1])["replacement_s"]
            results[version].append(took)
            print(f"    replacement up {took} s after the drain" if took is not None else "    none")
    if args.markdown:
        columns = f"replaced before the {args.deadline_s:.0f} s deadline | drain -> replacement (s), median"
        print(f"\n| date | machine | autoscaler | runs | {columns} | per run |")
        print("|---|---|---|---|---|---|---|")
    day = time.strftime("%Y-%m-%d")
    for version, runs in results.items():
        seen = [r for r in runs if r is not None]
        median = f"{statistics.median(seen):.1f}" if seen else "-"
        cells = ", ".join("none" if r is None else f"{r:.1f}" for r in runs)
        print(f"| {day} | {platform.node()} | {version} | {len(runs)} | {len(seen)} | {median} | {cells} |")


if __name__ == "__main__":
    main()
