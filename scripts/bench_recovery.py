"""What a preemption costs: spotray against Ray Train alone, on the same local spot cluster.

    python scripts/bench_recovery.py                # 3 scenarios x 2 arms x 3 repeats (~45 min)
    python scripts/bench_recovery.py --repeats 1 --markdown
    python scripts/bench_recovery.py --scenario grow --markdown

Each run is `spotray chaos` in its own process (a fresh local Ray cluster of real raylets,
each node with a loopback IMDS), on a small GPT (2 layers, 64-byte context, 160 steps,
checkpoint every 20 steps):

- announced: a fixed 2-worker job on 3 nodes; at step 40 one node gets a spot notice and is
  killed 8 s later; a replacement node joins, at the notice where the watcher drained the
  node (Ray's autoscaler v2 replaces a draining node at once: scripts/bench_replacement.py),
  after the kill with Ray alone.
- unannounced: an elastic 1..2-worker job on 2 nodes; at step 40 one node is killed; no
  replacement, so the job must go on with one worker.
- grow: an elastic 1..2-worker job on 1 node, steps slowed to 1 s on one worker, 0.5 s on
  two (a bigger model); at step 20 a second node joins, and the job must grow onto it. Both
  arms keep Ray's 60 s resize check. spotray weighs the node as soon as its freshly
  recomputed cluster view shows it (at most every second) and grows after a checkpoint it
  asks for; Ray alone grows at its next check and sees new nodes at its coordinator's 20 s
  tick.

Arms: `spotray` (watchers drain on notice, the loop checkpoints and holds, fast GCS health
check, fresh cluster view after a failure and at each decision, growth after a checkpoint)
and `ray-alone`
(`--ray-alone`: notices are served but nobody acts on them, Ray's default settings; the same
loop with its periodic checkpoints). Medians over the repeats of: steps lost, seconds from
the notice to a checkpoint handed to Ray, seconds from the kill (grow: the node joining) to
the first step of the new worker group.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CONFIG = {
    "name": "bench-recovery",
    "seed": 7,
    "workload": {
        "entrypoint": "train.gpt:GPTWorkload",
        "args": {"preset": "tiny", "n_layer": 2, "block_size": 64},
    },
    "optimizer": {
        "global_batch_size": 16,
        "micro_batch_size": 8,
        "steps": 160,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 5,
    },
    "scaling": {"min_workers": 2, "max_workers": 2},
    "checkpoint": {"storage_path": "./runs", "interval": 20, "keep": 10},
    "failure": {"max_failures": 3},
}
SCENARIOS = {
    "announced": ({}, ["--nodes", "3", "--event", "40:announced", "--lead-s", "8"]),
    "unannounced": (
        {"scaling": {"min_workers": 1, "max_workers": 2}},
        ["--nodes", "2", "--no-replace", "--event", "40:unannounced"],
    ),
    "grow": (
        {"scaling": {"min_workers": 1, "max_workers": 2}},
        # 1 s a step on the one worker before the growth (0.5 s at the full size of 2)
        ["--nodes", "1", "--no-replace", "--slow-step-s", "0.5", "--event", "20:add"],
    ),
}


def run(scenario: str, arm: str) -> dict:
    update, args = SCENARIOS[scenario]
    config = {**CONFIG, **{k: {**CONFIG[k], **v} for k, v in update.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "spotray.cli", "chaos", str(path), *args, "--report", "report.json"]
        if arm == "ray-alone":
            cmd.append("--ray-alone")
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise SystemExit(f"{scenario}/{arm} failed:\n{result.stderr[-2000:]}")
        return json.loads((Path(tmp) / "report.json").read_text())["events"][0]


def median(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):.1f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="print BENCHMARKS.md table rows")
    parser.add_argument(
        "--scenario", choices=list(SCENARIOS), action="append", help="only these (repeatable)"
    )
    args = parser.parse_args()

    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.repeats):
        for scenario in args.scenario or SCENARIOS:
            for arm in ("spotray", "ray-alone"):
                event = run(scenario, arm)
                results.setdefault((scenario, arm), []).append(event)
                took = event["kill_to_resume_s"]
                print(
                    f"repeat {r + 1} {scenario:<12} {arm:<10} lost {event['steps_lost']}, "
                    f"notice->ckpt {event['notice_to_checkpoint_s']}, to first step {took:.1f} s, "
                    f"workers {event['workers_after']}",
                    flush=True,
                )
    for (scenario, arm), events in results.items():
        lost = median([e["steps_lost"] for e in events])
        saved = median([e["notice_to_checkpoint_s"] for e in events])
        took = median([e["kill_to_resume_s"] for e in events])
        line = f"{scenario:<12} {arm:<10} steps lost {lost}, notice->checkpoint {saved} s, "
        line += f"to first step {took} s"
        print(line)
        if args.markdown:
            print(
                f"| {time.strftime('%Y-%m-%d')} | {platform.node()} | {scenario} | {arm} | {len(events)} | "
                f"{lost} | {saved} | {took} |"
            )


if __name__ == "__main__":
    main()
