"""The scaler's decision function (HPA semantics on the pool's work) and its policy
annotations; tests/test_scaler.py has the queue figures it reads from a real Redis."""

from __future__ import annotations

import pytest

from hookline.errors import InvalidSpec
from hookline.operator.scaler import Decision, History, Policy, Work, decide, policy_from

P = Policy(pool="default", min_replicas=1, max_replicas=20, target=10, window=300.0)


def run(
    policy: Policy, current: int, steps: list[tuple[float, int]], history: History | None = None
) -> list[Decision]:
    """Decisions at (time, work) steps, each applying the previous one's replicas."""
    out = []
    hist = history if history is not None else ((steps[0][0], current),)
    for now, work in steps:
        d = decide(policy, current, work, hist, now)
        out.append(d)
        current, hist = d.replicas, d.history
    return out


def test_backlog_sets_ceil_of_work_over_target() -> None:
    d = decide(P, 1, 45, (), 0.0)
    assert (d.wanted, d.recommendation, d.replicas) == (5, 5, 5)
    assert d.changed


def test_work_within_tolerance_leaves_replicas_alone() -> None:
    assert decide(P, 5, 54, (), 0.0).replicas == 5  # 8 % over the target
    assert decide(P, 5, 46, (), 0.0).replicas == 5  # 8 % under
    assert decide(P, 5, 56, (), 0.0).replicas == 6  # 12 % over: ceil(5.6)
    assert decide(P, 5, 56, (), 0.0, tolerance=0.2).replicas == 5


def test_replicas_stay_within_min_and_max() -> None:
    assert decide(P, 10, 10_000, (), 0.0).replicas == 20
    bounded = Policy(min_replicas=2, max_replicas=3, target=10)
    assert decide(bounded, 3, 0, (), 0.0).replicas == 2
    assert decide(bounded, 1, 0, (), 0.0).replicas == 2  # raised to min at once
    assert decide(bounded, 2, 1_000, (), 0.0).replicas == 3
    # Set by hand above max: back to max at once, whatever the history says.
    assert decide(bounded, 9, 1_000, ((0.0, 9),), 1.0).replicas == 3


def test_scale_up_is_capped_at_four_more_or_double_per_decision() -> None:
    assert decide(P, 1, 1_000, (), 0.0).replicas == 5  # max(1 + 4, 2)
    assert decide(P, 5, 1_000, (), 0.0).replicas == 10  # max(9, 10)
    assert decide(P, 10, 1_000, (), 0.0).replicas == 20
    assert decide(P, 0, 1_000, (), 0.0).replicas == 4  # from zero: max(0 + 4, 0)
    steps = run(P, 1, [(0.0, 1_000), (15.0, 1_000), (30.0, 1_000)])
    assert [d.replicas for d in steps] == [5, 10, 20]


def test_scale_down_waits_for_the_window_then_takes_its_highest_recommendation() -> None:
    p = Policy(min_replicas=1, max_replicas=20, target=10, window=60.0)
    steps = run(
        p,
        4,
        [(0.0, 80), (15.0, 30), (30.0, 0), (45.0, 0), (61.0, 0), (76.0, 0), (90.0, 0)],
    )
    assert [d.recommendation for d in steps] == [8, 3, 1, 1, 1, 1, 1]
    # 8 is in the window until t=60, 3 until t=75; then only 1s remain.
    assert [d.replicas for d in steps] == [8, 8, 8, 8, 3, 1, 1]
    assert "kept at 8: the last 60 s recommended up to 8" in steps[3].reason


def test_scale_up_after_a_drop_is_immediate_during_the_window() -> None:
    p = Policy(min_replicas=1, max_replicas=20, target=10, window=60.0)
    steps = run(p, 1, [(0.0, 40), (15.0, 0), (30.0, 70)])
    assert [d.replicas for d in steps] == [4, 4, 7]


def test_a_new_scaler_does_not_scale_down_before_a_whole_window() -> None:
    # The history starts with the replicas found, as after an operator restart.
    p = Policy(min_replicas=1, max_replicas=20, target=10, window=60.0)
    steps = run(p, 6, [(0.0, 0), (30.0, 0), (59.0, 0), (61.0, 0)])
    assert [d.replicas for d in steps] == [6, 6, 6, 1]


def test_pool_goes_to_zero_only_after_idle_for_the_window_and_wakes_on_work() -> None:
    p = Policy(min_replicas=0, max_replicas=10, target=10, window=30.0)
    steps = run(p, 2, [(0.0, 15), (10.0, 0), (20.0, 0), (29.0, 0), (31.0, 0), (50.0, 3)])
    assert [d.replicas for d in steps] == [2, 2, 2, 2, 0, 1]
    assert decide(p, 0, 0, ((0.0, 0),), 5.0).replicas == 0  # idle stays at zero


def test_min_zero_is_not_reached_while_there_is_work() -> None:
    p = Policy(min_replicas=0, max_replicas=10, target=1000, window=0.0)
    assert decide(p, 1, 1, (), 0.0).replicas == 1
    assert decide(p, 3, 1, (), 0.0).replicas == 1


def test_work_counts_the_stream_and_the_retries_due_only() -> None:
    w = Work(stream=120, retry_due=30, retry_scheduled=500, lag=100, pending=20)
    assert w.total == 150
    assert "lag 100" in w.describe() and "in flight 20" in w.describe()


def test_policy_defaults_and_annotations() -> None:
    assert policy_from({}) == Policy("default", 1, 10, 1000, 300.0)
    p = policy_from(
        {
            "hookline.dev/pool": "bulk",
            "hookline.dev/min-replicas": "0",
            "hookline.dev/max-replicas": "50",
            "hookline.dev/target-lag-per-replica": "5000",
            "hookline.dev/scale-down-window-seconds": "60",
            "unrelated": "x",
        }
    )
    assert p == Policy("bulk", 0, 50, 5000, 60.0)
    assert policy_from({}, env_pool="slow").pool == "slow"
    assert policy_from({"hookline.dev/pool": "slow"}, env_pool="slow").pool == "slow"


@pytest.mark.parametrize(
    ("annotations", "env_pool", "complaint"),
    [
        ({"hookline.dev/max-replicas": "ten"}, None, "not a number"),
        ({"hookline.dev/min-replicas": "-1"}, None, "negative"),
        ({"hookline.dev/max-replicas": "0"}, None, "at least 1"),
        ({"hookline.dev/min-replicas": "5", "hookline.dev/max-replicas": "2"}, None, "exceeds"),
        ({"hookline.dev/target-lag-per-replica": "0"}, None, "at least 1"),
        ({"hookline.dev/scale-down-window-seconds": "nan"}, None, "negative"),
        ({"hookline.dev/pool": "fast"}, "slow", "HOOKLINE_POOL='slow'"),
    ],
)
def test_invalid_policy_is_refused_with_the_reason(
    annotations: dict[str, str], env_pool: str | None, complaint: str
) -> None:
    with pytest.raises(InvalidSpec, match=complaint):
        policy_from(annotations, env_pool)
