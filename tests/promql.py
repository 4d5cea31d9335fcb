"""What a PromQL expression selects: its metric names and the labels it names, for the
checks that hookline's alert rules only read series hookline serves.

Not a PromQL parser — ``promtool check rules`` has parsed every expression first, so they
are valid PromQL — but a tokenizer that knows just enough of the grammar to tell a
metric name from every other identifier:

* string literals are skipped, and so is a range or subquery (``[5m]``, ``[1h:5m]``);
* ``name{...}`` is a vector selector: its matchers are read (label, operator, value);
* an identifier followed by ``(`` is a function or an aggregation, except ``by``,
  ``without``, ``on``, ``ignoring``, ``group_left`` and ``group_right``, whose
  parenthesised list holds label names;
* an aggregation (``sum``, ``max``, ``count``…) may come before its ``by (...)``;
* ``and``, ``or``, ``unless``, ``bool``, ``offset``, ``inf``, ``nan`` and the bare
  grouping words are keywords; a number or duration starts with a digit or ``.``.

Whatever identifier is left is a metric name. ``tests/test_alerts.py`` shows it on the
shapes the rules use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

OPERATING = Path(__file__).resolve().parent.parent / "docs" / "operating.md"

GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(0x[0-9a-fA-F]+|[0-9.][0-9A-Za-z.+\-_]*)")
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*")


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str


@dataclass
class Selection:
    """The metric names of an expression, each with the matchers of its selectors, and
    the label names its ``by``/``without``/``on``/``ignoring``/``group_*`` lists hold."""

    metrics: dict[str, list[Matcher]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def _string(expr: str, i: int) -> tuple[str, int]:
    """The string literal starting at ``expr[i]`` and the index after it."""
    quote = expr[i]
    out = []
    i += 1
    while expr[i] != quote:
        if expr[i] == "\\" and quote != "`":
            i += 1
        out.append(expr[i])
        i += 1
    return "".join(out), i + 1


def _skip_space(expr: str, i: int) -> int:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return i


def _matchers(expr: str, i: int) -> tuple[list[Matcher], int]:
    """The matchers of the ``{...}`` starting at ``expr[i]``, and the index after it."""
    found: list[Matcher] = []
    i += 1
    while True:
        i = _skip_space(expr, i)
        if expr[i] == "}":
            return found, i + 1
        if expr[i] == ",":
            i += 1
            continue
        m = _MATCHER.match(expr, i)
        if m is None:
            raise ValueError(f"cannot read a label matcher at {expr[i:]!r}")
        i = _skip_space(expr, m.end())
        value, i = _string(expr, i)
        found.append(Matcher(m.group(1), m.group(2), value))


def select(expr: str) -> Selection:
    out = Selection()
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace() or c in "()+-*/%^=!<>,@":
            i += 1
        elif c in "\"'`":
            _, i = _string(expr, i)
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c == "{":  # a selector without a name: {__name__="..."}
            found, i = _matchers(expr, i)
            for matcher in found:
                if matcher.label == "__name__" and matcher.op == "=":
                    out.metrics.setdefault(matcher.value, []).extend(found)
        elif c.isdigit() or c == ".":
            number = _NUMBER.match(expr, i)
            assert number is not None
            i = number.end()
        elif ident := _IDENT.match(expr, i):
            word = ident.group()
            i = _skip_space(expr, ident.end())
            following = expr[i] if i < len(expr) else ""
            if word.lower() in GROUPING:
                if following == "(":
                    end = expr.index(")", i)
                    out.grouping |= {w.strip() for w in expr[i + 1 : end].split(",") if w.strip()}
                    i = end + 1
            elif following == "(" or word.lower() in KEYWORDS | AGGREGATIONS:
                pass  # a function, an aggregation or an operator
            else:
                matchers = out.metrics.setdefault(word, [])
                if following == "{":
                    found, i = _matchers(expr, i)
                    matchers.extend(found)
        else:
            raise ValueError(f"unexpected {c!r} at {expr[i:]!r}")
    return out


def dashboard_queries() -> list[str]:
    """The queries of docs/operating.md's "What to watch": its first ``promql`` block, one
    expression a line, ``#`` lines are comments."""
    text = OPERATING.read_text().split("## What to watch", 1)[1]
    block = text.split("```promql\n", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
