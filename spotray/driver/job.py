"""The driver of a submitted run (`python -m spotray.driver.job`), inside a Ray Job on the cluster."""

from __future__ import annotations

import os
import sys

from rich.console import Console

from spotray.config import JobConfig
from spotray.driver.submit import CONFIG_ENV, FRESH_ENV, STOP_STEP_ENV
from spotray.errors import SpotrayError


def main() -> int:
    from spotray.cli.train import print_summary
    from spotray.driver.trainer import train

    console = Console(force_terminal=False, width=120)
    cfg = JobConfig.model_validate_json(os.environ[CONFIG_ENV])
    stop = int(os.environ[STOP_STEP_ENV]) if os.environ.get(STOP_STEP_ENV) else None
    try:
        summary = train(cfg, stop, os.environ.get(FRESH_ENV) == "1", console, attach=True)
    except SpotrayError as err:
        console.print(f"error: {err}", markup=False)
        return err.exit_code
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
