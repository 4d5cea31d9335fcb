"""What a WebhookEndpoint's status says (hookline.operator.status): its conditions, its
delivery figures, and the patch of only what changed."""

from __future__ import annotations

import json

from hookline.operator import status as st

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def ready(ok: bool, reason: str, message: str = "") -> st.Condition:
    return st.Condition(st.READY, ok, reason, message)


def test_a_condition_keeps_its_transition_time_while_its_status_stays_the_same() -> None:
    first = st.conditions([], [ready(False, st.SECRET_NOT_FOUND, "no Secret")], 1, T0)
    assert first == [
        {
            "type": "Ready",
            "status": "False",
            "observedGeneration": 1,
            "lastTransitionTime": "2023-11-14T22:13:20Z",
            "reason": "SecretNotFound",
            "message": "no Secret",
        }
    ]
    # still not ready, for another reason: the time it became not ready stays
    later = st.conditions(first, [ready(False, st.INVALID_SPEC, "bad url")], 2, T0 + 60)
    assert later[0]["lastTransitionTime"] == "2023-11-14T22:13:20Z"
    assert (later[0]["reason"], later[0]["observedGeneration"]) == ("InvalidSpec", 2)
    # ready now: a transition
    done = st.conditions(later, [ready(True, st.REGISTERED, "registered")], 2, T0 + 120)
    assert (done[0]["status"], done[0]["lastTransitionTime"]) == ("True", "2023-11-14T22:15:20Z")


def test_conditions_of_other_types_are_kept_and_ready_comes_first() -> None:
    theirs = {"type": "Audited", "status": "True", "reason": "Ok", "message": ""}
    out = st.conditions(
        [theirs],
        [st.Condition(st.DELIVERING, True, st.ACTIVE, "webhooks are delivered"), ready(True, "R")],
        1,
        T0,
    )
    assert [c["type"] for c in out] == ["Ready", "Delivering", "Audited"]
    assert out[2] == theirs


def test_a_huge_message_is_cut_to_what_the_api_server_accepts() -> None:
    (condition,) = st.conditions([], [ready(False, st.INVALID_SPEC, "x" * 100_000)], 1, T0)
    assert len(condition["message"]) == 32768


def test_figures_count_deliveries_and_show_the_last_success_and_failure() -> None:
    stats = {
        "delivered": "12",
        "failed": "3",
        "dead": "1",
        "duplicates": "2",
        "last_success": str(int(T0 * 1000)),
        "last_failure": json.dumps({"at": T0 + 60, "reason": "HTTP 503", "status": 503}),
    }
    assert st.figures(stats, pending=7) == {
        "delivered": 12,
        "failed": 3,
        "deadLettered": 1,
        "duplicates": 2,
        "pending": 7,
        "lastSuccess": "2023-11-14T22:13:20Z",
        "lastFailure": {"time": "2023-11-14T22:14:20Z", "reason": "HTTP 503", "status": 503},
    }


def test_an_endpoint_never_delivered_to_shows_zeros() -> None:
    assert st.figures({}, pending=0) == {
        "delivered": 0,
        "failed": 0,
        "deadLettered": 0,
        "duplicates": 0,
        "pending": 0,
    }


def test_a_failure_without_a_status_or_an_unreadable_record_still_gives_the_figures() -> None:
    timeout = {"last_failure": json.dumps({"at": T0, "reason": "timeout after 10 s"})}
    assert st.figures(timeout, 0)["lastFailure"] == {
        "time": "2023-11-14T22:13:20Z",
        "reason": "timeout after 10 s",
    }
    unreadable = st.figures({"delivered": "2", "last_failure": "{not json"}, 0)
    assert unreadable["delivered"] == 2 and "lastFailure" not in unreadable


def test_the_patch_holds_only_the_fields_that_changed() -> None:
    current = {"observedGeneration": 2, "delivered": 5, "pending": 0}
    assert st.changes(current, {"observedGeneration": 2, "delivered": 5, "pending": 0}) == {}
    assert st.changes(current, {"observedGeneration": 2, "delivered": 6, "failed": 0}) == {
        "delivered": 6,
        "failed": 0,
    }


def test_a_condition_is_found_by_its_type() -> None:
    status = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert st.condition(status, st.READY) == {"type": "Ready", "status": "True"}
    assert st.condition(status, st.DELIVERING) is None
    assert st.condition({}, st.READY) is None
