"""A history of accepted and delivered webhooks, checked as Jepsen's queue checker does.

Every id the receiver accepted (a 2xx) must be delivered at least once: an
accepted id never delivered is *lost*; a delivered id never accepted is
*unexpected* — unless it is *indeterminate*, the id of a request whose answer
never came (Jepsen's "info" operation: it may or may not have happened); an id
delivered more than once is a *duplicate*, which at-least-once delivery allows
but which the report counts and shows.

:class:`FanoutHistory` checks a source's events the same way, per subscriber,
and adds what fan-out promises: each event reaches every subscriber whose filter
matches its type or none of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class History:
    accepted: set[str] = field(default_factory=set)
    refused: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)
    indeterminate: set[str] = field(default_factory=set)

    def check(self) -> Report:
        delivered = set(self.deliveries)
        return Report(
            accepted=len(self.accepted),
            delivered=len(delivered & self.accepted),
            lost=sorted(self.accepted - delivered),
            unexpected=sorted(delivered - self.accepted - self.indeterminate),
            duplicated={i: n for i, n in self.deliveries.items() if n > 1},
        )


@dataclass
class Report:
    accepted: int
    delivered: int
    lost: list[str]
    unexpected: list[str]
    duplicated: dict[str, int]

    @property
    def valid(self) -> bool:
        return not self.lost and not self.unexpected

    def __str__(self) -> str:
        extra = sum(n - 1 for n in self.duplicated.values())
        return (
            f"accepted={self.accepted} delivered={self.delivered} lost={len(self.lost)} "
            f"unexpected={len(self.unexpected)} duplicated_ids={len(self.duplicated)} "
            f"extra_deliveries={extra}" + (f" lost_ids={self.lost[:5]}" if self.lost else "")
        )


def matches(patterns: Sequence[str], event_type: str) -> bool:
    """A subscription filter as docs state it: empty takes every type, ``a.*`` every type
    that starts with ``a.``, anything else exactly its own type. Written here again, not
    imported, so the check does not share a bug with the code it checks."""
    return not patterns or any(
        p == event_type or (p.endswith(".*") and event_type.startswith(p[:-1])) for p in patterns
    )


@dataclass
class Post:
    """A source's event as its sender posted it: what it sent and what it was answered."""

    marker: int  # also in the body, so that a delivery names the post it came from
    event_type: str
    body: bytes
    idempotent: bool  # sent with an Idempotency-Key, and retried with it until answered
    answers: list[int | None] = field(default_factory=list)  # per try; None: no answer
    id: str | None = None  # the 202's id
    width: int | None = None  # the 202's "endpoints"

    @property
    def accepted(self) -> bool:
        return self.id is not None

    @property
    def refused(self) -> bool:
        """Every try was answered, none with a 202: nothing may have been queued."""
        return not self.accepted and bool(self.answers) and None not in self.answers

    @property
    def indeterminate(self) -> bool:
        """A try's answer never came and none was a 202: queued or not, both are right."""
        return not self.accepted and None in self.answers


@dataclass(frozen=True)
class Receipt:
    """One delivery as an endpoint received it."""

    path: str  # which subscriber
    id: str  # webhook-id
    event_type: str  # the X-WH-Event-Type header it carried
    marker: int | None  # the marker of the post its body came from (None: unreadable)
    body: bytes


@dataclass
class FanoutHistory:
    subscribers: dict[str, Sequence[str]]  # path → its eventTypes filter
    posts: dict[int, Post] = field(default_factory=dict)
    receipts: list[Receipt] = field(default_factory=list)

    def matching(self, event_type: str) -> set[str]:
        return {path for path, f in self.subscribers.items() if matches(f, event_type)}

    def check(self) -> FanoutReport:
        posts = self.posts.values()
        paths_of: dict[str, set[str]] = {}  # event id → the paths that received it
        ids_of: dict[int, set[str]] = {}  # post marker → the event ids delivered for it
        corrupt: list[str] = []
        for r in self.receipts:
            post = self.posts.get(r.marker) if r.marker is not None else None
            if post is None or r.body != post.body or r.event_type != post.event_type:
                corrupt.append(r.id)
                continue
            paths_of.setdefault(r.id, set()).add(r.path)
            ids_of.setdefault(post.marker, set()).add(r.id)
        type_of = {i: self.posts[m].event_type for m, ids in ids_of.items() for i in ids}
        per_endpoint = {}
        for path in self.subscribers:
            history = History(
                accepted={p.id for p in posts if p.id and path in self.matching(p.event_type)},
                deliveries=Counter(r.id for r in self.receipts if r.path == path),
                indeterminate={
                    i for p in posts if p.indeterminate for i in ids_of.get(p.marker, ())
                },
            )
            per_endpoint[path] = history.check()
        return FanoutReport(
            posts=len(self.posts),
            accepted=sum(p.accepted for p in posts),
            refused=sum(p.refused for p in posts),
            indeterminate=sum(p.indeterminate for p in posts),
            indeterminate_queued=sum(p.indeterminate and p.marker in ids_of for p in posts),
            recovered=sum(p.accepted and None in p.answers for p in posts),
            per_endpoint=per_endpoint,
            wrong_width=[
                p.id
                for p in posts
                if p.id is not None and p.width != len(self.matching(p.event_type))
            ],
            partial={
                i: sorted(paths)
                for i, paths in paths_of.items()
                if i in type_of and paths != self.matching(type_of[i])
            },
            refused_delivered=[p.marker for p in posts if p.refused and p.marker in ids_of],
            fanned_twice={
                p.marker: sorted(ids_of[p.marker])
                for p in posts
                if len(ids_of.get(p.marker, ())) > 1
                or (p.id is not None and ids_of.get(p.marker, {p.id}) != {p.id})
            },
            corrupt=corrupt,
        )


@dataclass
class FanoutReport:
    posts: int
    accepted: int  # posts answered 202 (after retries)
    refused: int  # posts answered, never 202
    indeterminate: int  # posts with a lost answer and no 202
    indeterminate_queued: int  # ... of which the event was queued after all (and delivered)
    recovered: int  # accepted by a retry with the Idempotency-Key after a lost answer
    per_endpoint: dict[str, Report]  # each subscriber's own history
    wrong_width: list[str]  # 202s whose "endpoints" was not the number of matching filters
    # event ids that some matching subscriber did not receive, or a non-matching one did
    partial: dict[str, list[str]]
    refused_delivered: list[int]  # refused posts whose event was delivered anyway
    fanned_twice: dict[int, list[str]]  # posts whose event went out under two ids
    corrupt: list[str]  # deliveries whose body or type is not what their post sent

    @property
    def valid(self) -> bool:
        return (
            all(r.valid for r in self.per_endpoint.values())
            and not self.wrong_width
            and not self.partial
            and not self.refused_delivered
            and not self.fanned_twice
            and not self.corrupt
        )

    def __str__(self) -> str:
        lines = [
            f"posts={self.posts} accepted={self.accepted} refused={self.refused} "
            f"indeterminate={self.indeterminate} (queued after all: "
            f"{self.indeterminate_queued}) recovered by a retry={self.recovered} "
            f"wrong_width={len(self.wrong_width)} "
            f"partial={len(self.partial)} refused_delivered={len(self.refused_delivered)} "
            f"fanned_twice={len(self.fanned_twice)} corrupt={len(self.corrupt)}"
        ]
        lines += [f"  {path}: {report}" for path, report in self.per_endpoint.items()]
        for what, items in (
            ("wrong width", self.wrong_width),
            ("partial", list(self.partial.items())),
            ("refused but delivered", self.refused_delivered),
            ("fanned out twice", list(self.fanned_twice.items())),
            ("corrupt", self.corrupt),
        ):
            if items:
                lines.append(f"  {what}: {items[:5]}")
        return "\n".join(lines)
