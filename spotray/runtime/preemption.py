"""What the training loop does about an announced preemption: a small policy, no Ray calls.

Once the drain signal Ray Train hands the workers (a `PreemptionInfo`, agreed by all ranks:
`runtime.loop.agreed_preemption`) names a draining node (the watcher drained it on AWS's
two-minute notice), the loop:

1. checkpoints at once, so the work done before the notice is safe even if the node goes
   early;
2. keeps training, since the notice leaves up to two minutes of useful work;
3. checkpoints once more `guard_s` before the deadline and then holds, taking no further
   step. Steps taken after that last checkpoint would be lost with the node; holding loses
   none. (Where the notice's own checkpoint is written only after that moment and the
   group could restart without the node, that one is the last: see 4.)
4. ends the worker group as soon as that checkpoint is registered and the nodes that stay
   (with the replacement launched at the notice) can host as many workers (`NodeLeaving`,
   which spotray's failure policy counts as the preemption): the one restart a preemption
   costs then runs while the node still has its last seconds, not after it is gone.
   Without that room it holds until Ray Train ends the group at the deadline.

The guard covers what must happen before the deadline: noticing the time (one poll), the
step under way, writing the checkpoint, and the uploads to storage still ahead of it and its
own (as the last ones measured), with a factor of two for noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

POLL_S = 1.0  # how often rank 0 looks for a checkpoint request; the guard counts one as its slack
MIN_GUARD_S = 3.0  # never cut it finer than this
HOLD_GRACE_S = 30.0  # still alive this long past the deadline: the node stayed, train on


def poll_due(since_last_poll_s: float, step_s: float) -> bool:
    """Whether to poll at this step boundary: the one nearest POLL_S after the last poll.

    A strict `since >= POLL_S` polls every other step half the time when steps take about
    POLL_S, and every poll is the delay of a checkpoint request (measured: the
    growth's asked-for checkpoint came 2.3 s after the request at 1 s steps)."""
    return since_last_poll_s + step_s / 2 >= POLL_S


@dataclass
class PreemptionPlan:
    """Tracks one preemption notice through the steps above."""

    deadline_ms: int | None = None  # from PreemptionInfo; None: no notice (or no deadline)
    nodes: dict[str, list[int]] = field(default_factory=dict)  # preempted node -> its ranks
    noticed: bool = False
    final_saved: bool = False

    def is_news(self, info: Any) -> bool:
        """Whether a `PreemptionInfo` (or None) says what this plan has not yet taken in."""
        if info is None:
            return False
        return not self.noticed or _deadline(info) != self.deadline_ms

    def notice(self, info: Any) -> bool:
        """Take in a `PreemptionInfo` (or None); True when it is news: checkpoint now."""
        if info is None:
            return False
        news = self.is_news(info)
        self.noticed, self.deadline_ms = True, _deadline(info)
        self.nodes = {str(k): list(v) for k, v in getattr(info, "preempted_node_to_ranks", {}).items()}
        if news:
            self.final_saved = False
        return news

    @staticmethod
    def guard_s(step_s: float, commit_s: float) -> float:
        return max(MIN_GUARD_S, 2.0 * (POLL_S + step_s + commit_s))

    def wants_final(self, now_ms: float, step_s: float, commit_s: float) -> bool:
        """True once, when the last checkpoint before the deadline is due."""
        if not self.noticed or self.final_saved or not self.deadline_ms:
            return False
        return now_ms >= self.deadline_ms - self.guard_s(step_s, commit_s) * 1000

    def holding_until_ms(self) -> float | None:
        """After the last checkpoint: hold until this time (then train on), else None."""
        if not self.final_saved or not self.deadline_ms:
            return None
        return self.deadline_ms + HOLD_GRACE_S * 1000


def _deadline(info: Any) -> int | None:
    """A `PreemptionInfo`'s deadline in ms, None where it has none (Ray Core's 0 included)."""
    return getattr(info, "deadline_ms", None) or None


class NodeLeaving(Exception):
    """Raised by rank 0 to end its worker group before a preempted node's deadline: the last
    checkpoint before it is registered, and the nodes that stay can host the group (step 4
    of the module doc). Carries what Ray Train's `PreemptionInfo` does, for the failure
    policy (spotray.elastic.recovery.PreemptionFailurePolicy)."""

    def __init__(self, step: int, deadline_ms: int | None, nodes: dict[str, list[int]]) -> None:
        super().__init__(step, deadline_ms, nodes)
        self.step, self.deadline_ms, self.nodes = step, deadline_ms, nodes

    def __str__(self) -> str:
        going = ", ".join(n[:8] for n in sorted(self.nodes)) or "a node"
        return (
            f"step {self.step} is checkpointed and node {going} is being preempted: ending this "
            "worker group now, to restart on the nodes that stay"
        )
