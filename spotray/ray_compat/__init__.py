"""The one place that touches Ray's private names; spotray is tested on Ray 2.60.

Each function names the private API it uses and the public one that would replace it.
`tests/unit/test_ray_compat.py` checks every touch point against the installed Ray, so a
Ray that moves one fails there, by name, instead of silently (a policy that never resizes,
a drain that never happens). Modules: `node` (GCS, KV, drains, this machine's Ray), `train`
(Ray Train's scaling policies and controller), `autoscaler` (the launcher's config checks
and the fake multi-node provider), `workers` (the raylet's worker pool: warm spares).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from spotray.errors import SpotrayError
from spotray.ray_compat import autoscaler, node, workers

__all__ = ["SUPPORTED_RAY", "autoscaler", "check_ray_version", "node", "workers"]

SUPPORTED_RAY = "2.60."


def check_ray_version() -> None:
    """One line at start instead of silent misbehaviour on a Ray whose internals moved."""
    try:
        found = version("ray")
    except PackageNotFoundError:
        raise SpotrayError("Ray is not installed: pip install 'ray[train,default]==2.60.*'") from None
    if not found.startswith(SUPPORTED_RAY):
        raise SpotrayError(
            f"spotray needs Ray {SUPPORTED_RAY}x (found {found}): it reaches into Ray internals "
            "that are checked on that version only (spotray/ray_compat)"
        )
