"""A history of accepted and delivered webhooks, checked as Jepsen's queue checker does.

Every id the receiver accepted (a 2xx) must be delivered at least once: an
accepted id never delivered is *lost*; a delivered id never accepted is
*unexpected*; an id delivered more than once is a *duplicate*, which
at-least-once delivery allows but which the report counts and shows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class History:
    accepted: set[str] = field(default_factory=set)
    refused: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)

    def check(self) -> Report:
        delivered = set(self.deliveries)
        return Report(
            accepted=len(self.accepted),
            delivered=len(delivered & self.accepted),
            lost=sorted(self.accepted - delivered),
            unexpected=sorted(delivered - self.accepted),
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
