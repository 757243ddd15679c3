"""The loop's preemption plan, stepped through a notice."""

from __future__ import annotations

import itertools

from ray.train import PreemptionInfo

from spotray.runtime.preemption import HOLD_GRACE_S, MIN_GUARD_S, POLL_S, PreemptionPlan, poll_due

DEADLINE = 1_000_000_000  # ms


def info(deadline_ms: int | None = DEADLINE) -> PreemptionInfo:
    return PreemptionInfo(deadline_ms=deadline_ms, preempted_node_to_ranks={"n1": [1]})


def test_notice_checkpoints_once_then_final_checkpoint_then_hold() -> None:
    plan = PreemptionPlan()
    assert not plan.notice(None)
    assert plan.notice(info())  # news: checkpoint now
    assert not plan.notice(info())  # the same notice at the next poll
    guard_ms = PreemptionPlan.guard_s(step_s=0.5, commit_s=0.2) * 1000
    assert not plan.wants_final(DEADLINE - guard_ms - 1, 0.5, 0.2)  # still time to train
    assert plan.wants_final(DEADLINE - guard_ms, 0.5, 0.2)
    assert plan.holding_until_ms() is None
    plan.final_saved = True
    assert not plan.wants_final(DEADLINE, 0.5, 0.2)  # once
    assert plan.holding_until_ms() == DEADLINE + HOLD_GRACE_S * 1000


def test_guard_grows_with_step_and_write_time() -> None:
    assert PreemptionPlan.guard_s(0.0, 0.0) == MIN_GUARD_S
    assert PreemptionPlan.guard_s(5.0, 10.0) == 2 * (1.0 + 5.0 + 10.0)


def test_no_deadline_means_no_final_checkpoint_and_no_hold() -> None:
    plan = PreemptionPlan()
    assert plan.notice(info(None))
    assert not plan.wants_final(10**15, 0.1, 0.1)
    assert plan.holding_until_ms() is None


def test_a_second_notice_with_another_deadline_is_news() -> None:
    plan = PreemptionPlan()
    plan.notice(info(DEADLINE))
    plan.final_saved = True
    assert plan.notice(info(DEADLINE + 5000))  # another node, later deadline (merged info)
    assert not plan.final_saved


def test_a_signal_is_news_until_the_plan_has_taken_it_in() -> None:
    """A rank that holds a drain signal asks all ranks to poll at the next step; once the
    poll has taken it in, the same signal asks for nothing more, a later deadline does."""
    plan = PreemptionPlan()
    assert not plan.is_news(None)
    assert plan.is_news(info())
    assert plan.is_news(info())  # asked for, not yet polled: still news
    plan.notice(info())
    assert not plan.is_news(info()) and not plan.is_news(None)
    assert plan.is_news(info(DEADLINE + 5000))


def polled_steps(step_times: list[float]) -> list[int]:
    """The steps (1-based) at whose end the loop polls, for these step durations."""
    now, last, polled = 0.0, float("-inf"), []
    for step, dt in enumerate(step_times, start=1):
        now += dt
        if poll_due(now - last, dt):
            last = now
            polled.append(step)
    return polled


def test_steps_of_about_a_poll_interval_poll_at_every_step() -> None:
    jittered = [POLL_S + (0.004 if i % 2 else -0.004) for i in range(10)]  # 0.996 s, 1.004 s, ...
    assert polled_steps(jittered) == list(range(1, 11))


def test_short_steps_poll_about_once_a_poll_interval_and_long_steps_every_step() -> None:
    short = polled_steps([POLL_S / 5] * 50)  # 0.2 s steps
    assert short[0] == 1 and all(b - a == 5 for a, b in itertools.pairwise(short))
    assert polled_steps([3 * POLL_S] * 4) == [1, 2, 3, 4]


def _agree_on_rank(rank: int, world: int, port: int, out: str) -> None:
    """One gloo rank: agree on the drain signal 30 times while a thread runs collectives on a
    group of its own, as the checkpoint writer runs DCP's (for torch.multiprocessing.spawn)."""
    import os
    import pickle
    import threading
    from pathlib import Path

    import torch.distributed as dist

    from spotray.runtime import loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    writers = dist.new_group(backend="gloo")
    loop.signalled_preemption = lambda: info() if rank == world - 1 else None  # the last rank only
    writing = threading.Thread(
        target=lambda: [dist.broadcast_object_list([i], src=0, group=writers) for i in range(200)]
    )
    writing.start()
    agreed = [loop.agreed_preemption(distributed=True) for _ in range(30)]
    writing.join()
    Path(out, f"{rank}.pkl").write_bytes(pickle.dumps(agreed))
    dist.destroy_process_group()


def test_every_rank_takes_the_signal_any_rank_holds_while_a_checkpoint_is_written(tmp_path) -> None:
    import pickle

    import torch.multiprocessing as mp

    from tests.conftest import free_port

    world = 3
    ranks = mp.spawn(_agree_on_rank, args=(world, free_port(), str(tmp_path)), nprocs=world, join=False)
    for _ in range(60):  # a collective on the writer's group from the training thread would hang
        if ranks.join(timeout=1):
            break
    else:
        for process in ranks.processes:
            process.kill()
        raise AssertionError("agreeing on the drain signal hung beside the writer's collectives")
    for rank in range(world):
        agreed = pickle.loads((tmp_path / f"{rank}.pkl").read_bytes())
        assert agreed == [info()] * 30  # rank 0 held none: it still takes the last rank's
