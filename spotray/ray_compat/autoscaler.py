"""Ray's cluster launcher internals: its config checks and the fake multi-node provider."""

from __future__ import annotations

import logging
from typing import Any

# The fake multi-node provider as an external module: autoscaler v2 reads the provider's
# defaults file, which the 2.60 wheel lacks for fake_multinode.
FAKE_PROVIDER_MODULE = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def prepare_and_validate(raw: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` fills and validates it
    (`ray.autoscaler._private.util.prepare_config` and `validate_config`; public
    replacement: none, `ray up --dry-run` does not exist). Raises what Ray raises."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)  # its INFO chatter
    config = prepare_config(raw)
    validate_config(config)
    return config


def fake_head_node_id() -> str:
    """The id the fake provider gives the head (`fake_multi_node.node_provider`)."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    return FAKE_HEAD_NODE_ID
