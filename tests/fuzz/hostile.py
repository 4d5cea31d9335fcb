"""Hostile requests as bytes, for the scripted cases of issue 16 and a hypothesis strategy.

A :class:`Hostile` is a request line, header lines and a body, exactly as they go on
the wire, plus where they are cut into pieces and how long the client pauses before
each piece. :func:`hostile_requests` draws them from the space a careless or hostile
sender covers: any method, target and version spelling, the ingest key valid, paused,
disabled, unknown, missing, repeated or not UTF-8, every framing (a right, wrong,
repeated or absurd Content-Length, chunked with sane or absurd chunk sizes, both at
once, neither), header values as arbitrary bytes, a thousand headers, a 100 KB one,
bodies around the inline limit and the body cap.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

from tests.fuzz.raw import Piece

HOST = b"Host: hookline.test"
JSON = b"Content-Type: application/json"


@dataclass(frozen=True)
class Keys:
    """The ingest keys of the endpoints the fuzz stack serves."""

    good: str  # an endpoint that takes webhooks (and forwards X-Event-Type)
    paused: str
    disabled: str


@dataclass(frozen=True)
class Hostile:
    what: str  # a short description, for reports
    head: bytes  # request line and header lines, up to and including the empty line
    body: bytes = b""
    cuts: tuple[int, ...] = ()  # offsets into head + body where a new piece starts
    pauses: tuple[float, ...] = ()  # seconds before each piece after the first
    wire: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", self.head + self.body)

    def pieces(self) -> list[Piece]:
        edges = sorted({c for c in self.cuts if 0 < c < len(self.wire)})
        starts = [0, *edges]
        ends = [*edges, len(self.wire)]
        pauses = [0.0, *self.pauses]
        return [
            (pauses[i] if i < len(pauses) else 0.0, self.wire[a:b])
            for i, (a, b) in enumerate(zip(starts, ends, strict=True))
        ]

    def __str__(self) -> str:
        head = (
            self.head
            if len(self.head) <= 400
            else self.head[:400] + b"...(%d bytes)" % len(self.head)
        )
        body = f", body {len(self.body)} bytes" if self.body else ""
        split = ""
        if len(self.pieces()) > 1:
            split = f", in {len(self.pieces())} pieces over {sum(self.pauses):.2f} s"
        return f"{self.what}: {head!r}{body}{split}"


def request(
    what: str,
    headers: Sequence[bytes],
    body: bytes = b"",
    line: bytes = b"POST /webhooks/send HTTP/1.1",
) -> Hostile:
    """A request from its request line and header lines, each as it goes on the wire."""
    head = b"".join(h + b"\r\n" for h in (line, *headers)) + b"\r\n"
    return Hostile(what, head, body)


def key_header(key: str | bytes) -> bytes:
    return b"X-WH-Endpoint-Key: " + (key.encode() if isinstance(key, str) else key)


def good_request(key: str) -> Hostile:
    """What a well-behaved sender posts: the after-every-case check that the door still opens."""
    body = b'{"check":"' + uuid.uuid4().hex.encode() + b'"}'
    return request(
        "a good request",
        [HOST, key_header(key), JSON, b"Content-Length: %d" % len(body)],
        body,
    )


def chunked(body: bytes, sizes: Sequence[int] = ()) -> bytes:
    """``body`` in chunked transfer coding, cut after each size in ``sizes`` (then the rest)."""
    out = bytearray()
    pos = 0
    for size in [*sizes, len(body)]:
        piece = body[pos : pos + size]
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
        pos += len(piece)
    return bytes(out + b"0\r\n\r\n")


# -- the strategy
#
# A request has six sites where it can be damaged: its request line, its Host, its key
# header, its framing, its other headers, and its bulk (a thousand headers, one of 100 KB).
# Each generated request damages a few of them at most, and the others are what a sane
# sender would send, so that generated requests reach every layer: the parser, the
# handler's checks, the body store and the queue. Bodies range from empty to twice the
# cap whatever the damage, and a request goes in pieces with pauses two times in three.

SITES = ("line", "host", "key", "framing", "headers", "bulk")


def _fill(seed: bytes, n: int) -> bytes:
    return (seed * (n // len(seed) + 1))[:n]


# Header values without CR or LF (those are damage of their own).
VALUE_BYTES = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
NOT_UTF8 = st.sampled_from([b"cl\xe9", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"ok\x80"])
TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~",
    min_size=1,
    max_size=20,
).map(str.encode)
PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def _request_line(draw: st.DrawFn, damaged: bool) -> bytes:
    if not damaged:
        path = draw(st.sampled_from([b"/webhooks/send"] * 4 + [b"/webhooks/send?event=a&b"]))
        http = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0"]))
        return b"POST " + path + b" " + http
    # HEAD is left out: its answers carry no body, so "every refusal is JSON" cannot hold.
    methods = [b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"post", b"P\xd6ST", b"", b"POST "]
    targets = [
        b"/webhooks/send?%zz",
        b"/webhooks/send#frag",
        b"/webhooks/%73end",
        b"/webhooks/send/",
        b"/webhooks//send",
        b"/WEBHOOKS/SEND",
        b"/",
        b"*",
        b"http://hookline.test/webhooks/send",
        b"/webhooks/s\xe9nd",
        b"/webhooks/send\x00",
        b"/../webhooks/send",
        b"webhooks/send",
        b"/webhooks/send?" + b"q" * 9000,  # past aiohttp's 8190-byte request line
    ]
    versions = [
        None,
        b"HTTP/2.0",
        b"HTTP/1.2",
        b"HTTP/0.9",
        b"http/1.1",
        b"HTTP/1.1x",
        b"HTTP/11",
        b"HTTP/1.1 HTTP/1.1",
    ]
    method, target = b"POST", b"/webhooks/send"
    version: bytes | None = b"HTTP/1.1"
    part = draw(st.sampled_from(["method", "target", "version"]))
    if part == "method":
        method = draw(st.sampled_from(methods) | TOKEN.filter(lambda t: t.upper() != b"HEAD"))
    elif part == "target":
        target = draw(st.sampled_from(targets))
    else:
        version = draw(st.sampled_from(versions))
    return method + b" " + target + (b"" if version is None else b" " + version)


@st.composite
def _host_lines(draw: st.DrawFn, damaged: bool) -> list[bytes]:
    if not damaged:
        return [HOST]
    return draw(
        st.sampled_from([[], [HOST, b"Host: other.test"], [b"Host:"]])
        | NOT_UTF8.map(lambda v: [b"Host: " + v])
    )


@st.composite
def _key_lines(draw: st.DrawFn, keys: Keys, damaged: bool) -> list[bytes]:
    if not damaged:
        # Mostly the good key; now and then a refusal every sender may meet.
        key = draw(st.sampled_from([keys.good] * 7 + [keys.paused, keys.disabled, "not-a-key"]))
        return [key_header(key)]
    return draw(
        st.sampled_from(
            [
                [],
                [key_header(b"")],
                [key_header(b"  " + keys.good.encode() + b"  ")],
                [b"x-wh-endpoint-key: " + keys.good.encode()],
                [key_header(keys.good), key_header("not-a-key")],
                [key_header("not-a-key"), key_header(keys.good)],
                [key_header(keys.good.encode() + b"\xe9")],
            ]
        )
        | NOT_UTF8.map(lambda v: [key_header(v)])
        | VALUE_BYTES.map(lambda v: [key_header(v)])
    )


@st.composite
def _extra_lines(draw: st.DrawFn, damaged: bool) -> list[bytes]:
    """Header lines besides Host, the key and the framing: what senders add (content
    types, idempotency keys, forwarded and other headers), and when damaged, one or more
    values as arbitrary bytes or a malformed line."""
    unique = uuid.uuid4().hex.encode()  # an Idempotency-Key no earlier case used
    sane = st.one_of(
        st.just(JSON),
        st.just(b"Content-Type: text/plain; charset=utf-8"),
        st.just(b"Idempotency-Key: " + unique),
        PRINTABLE.map(lambda v: b"X-Event-Type: " + v.strip().encode()),
        st.tuples(TOKEN, PRINTABLE).map(lambda t: t[0] + b": " + t[1].strip().encode()),
        st.sampled_from([b"Expect: 100-continue", b"Connection: close", b"Connection: keep-alive"]),
    )
    bad = st.one_of(
        VALUE_BYTES.map(lambda v: b"Content-Type: " + v),
        NOT_UTF8.map(lambda v: b"Content-Type: application/json; charset=" + v),
        (VALUE_BYTES | NOT_UTF8).map(lambda v: b"Idempotency-Key: " + unique + v),
        (VALUE_BYTES | NOT_UTF8).map(lambda v: b"X-Event-Type: " + v),
        st.tuples(TOKEN, VALUE_BYTES).map(lambda t: t[0] + b": " + t[1]),
        st.sampled_from(
            [
                b"Expect: something-else",
                b"Connection: Upgrade\r\nUpgrade: websocket",
                b"Content-Encoding: gzip",
                b"Content-Encoding: deflate",
                b"Content-Encoding: br",
                b"Content-Encoding: unknown",
                b"No-Colon-Here",
                b"X-WH-Endpoint-Key : spaced",
                b"X Bad Name: v",
                b"\xff\xfe: v",
                b": empty-name",
                b" folded continuation",
                b"X-Bare-CR: a\rb",
                b"X-Bare-LF: a\nb",
                b"X-Nul: a\x00b",
                b"X-Del: a\x7fb",
                b"X-Long: " + b"v" * 9000,  # past aiohttp's 8190-byte field
            ]
        ),
    )
    # One of each name: two Content-Types are already a malformed request to aiohttp.
    lines = draw(st.lists(sane, max_size=4, unique_by=lambda h: h.split(b":")[0].lower()))
    if damaged:
        lines += draw(st.lists(bad, min_size=1, max_size=3))
    return lines


@st.composite
def _bulk_lines(draw: st.DrawFn, damaged: bool) -> list[bytes]:
    if not damaged:
        return []
    if draw(st.booleans()):
        return [b"X-Filler-%d: %d" % (i, i) for i in range(1000)]
    return [b"X-Huge: " + b"h" * 100_000]


@st.composite
def _body(draw: st.DrawFn, inline_limit: int, max_body: int) -> bytes:
    size = draw(
        st.one_of(
            st.just(0),
            st.integers(1, 64),
            st.sampled_from(
                [inline_limit - 1, inline_limit, inline_limit + 1, max_body, max_body + 1]
            ),
            st.integers(inline_limit + 2, max_body - 1),
            st.integers(max_body + 2, 2 * max_body),
        )
    )
    return _fill(draw(st.binary(min_size=1, max_size=16)), size)


# Damaged framings; those that leave the server waiting for bytes that never come (a
# Content-Length above the body, a chunked body without its last chunk, a huge real
# chunk size) cost a whole request deadline each, so they are drawn less often.
FRAMINGS = [
    "length-short",
    "length-twice",
    "length-conflict",
    "length-bad",
    "length-and-chunked",
    "chunked-absurd",
    "chunked-bad-size",
    "chunked-bad-crlf",
    "encoding-other",
    "none",
]
SLOW_FRAMINGS = ["length-long", "chunked-unterminated", "chunked-huge"]
BAD_LENGTHS = [b"-1", b"+5", b"0x10", b"1e3", b"abc", b"5 5", b"5,5", b"", b"\xff", b"9" * 30]
BAD_CHUNK_SIZES = [b"zz", b"-1", b"", b" 5", b"0x5", b"5\x00", b"\xff", b"5;\xff"]
OTHER_ENCODINGS = [
    b"gzip",
    b"chunked, gzip",
    b"gzip, chunked",
    b"identity",
    b"Chunked",
    b" chunked",
    b"chunked\xff",
    b"chunked, chunked",
    b"x",
]


@st.composite
def _framing(draw: st.DrawFn, body: bytes, damaged: bool) -> tuple[str, list[bytes], bytes]:
    """(name, header lines, body on the wire) for one way of saying how long the body is."""
    n = len(body)
    if not damaged:
        kind = draw(st.sampled_from(["length", "length", "chunked"]))
    elif draw(st.integers(0, 9)) == 7:  # not 0: hypothesis favours the simplest value
        kind = draw(st.sampled_from(SLOW_FRAMINGS))
    else:
        kind = draw(st.sampled_from(FRAMINGS))
    cl = b"Content-Length: %d" % n
    te = b"Transfer-Encoding: chunked"
    sizes = draw(st.lists(st.integers(1, max(1, n)), max_size=4)) if n else []
    if kind == "length":
        return kind, [cl], body
    if kind == "chunked":
        wire = chunked(body, sizes)
        if draw(st.booleans()):
            wire = wire.replace(b"\r\n", b";ext=1\r\n", 1)  # a chunk extension, ignored
        return kind, [te], wire
    if kind == "length-short":
        return kind, [b"Content-Length: %d" % max(0, n - draw(st.integers(1, 10)))], body
    if kind == "length-long":
        return kind, [b"Content-Length: %d" % (n + draw(st.integers(1, 10)))], body
    if kind == "length-twice":
        return kind, [cl, cl], body
    if kind == "length-conflict":
        return kind, [cl, b"Content-Length: %d" % (n + 1)], body
    if kind == "length-bad":
        value = draw(st.sampled_from(BAD_LENGTHS) | st.sampled_from([b" %d", b"%d ", b"0%d"]))
        return kind, [b"Content-Length: " + (value % n if b"%d" in value else value)], body
    if kind == "length-and-chunked":
        order = draw(st.booleans())
        return kind, [cl, te] if order else [te, cl], chunked(body, sizes)
    if kind == "chunked-absurd":
        size = draw(st.sampled_from([b"ffffffffffffffff", b"10000000000000000", b"f" * 40]))
        return kind, [te], size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    if kind == "chunked-huge":
        return kind, [te], b"7fffffff\r\n" + body
    if kind == "chunked-bad-size":
        size = draw(
            st.sampled_from([b"zz", b"-1", b"", b" 5", b"0x5", b"5\x00", b"\xff", b"5;\xff"])
        )
        return kind, [te], size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    if kind == "chunked-bad-crlf":
        return kind, [te], b"%x\r\n%sXX0\r\n\r\n" % (n, body)
    if kind == "chunked-unterminated":
        return kind, [te], chunked(body, sizes)[: -len(b"0\r\n\r\n")]
    if kind == "encoding-other":
        value = draw(st.sampled_from(OTHER_ENCODINGS))
        wire = chunked(body, sizes) if b"chunked" in value.lower() else body
        return kind, [b"Transfer-Encoding: " + value], wire
    return "none", [], body  # the body bytes then read as the next request


@st.composite
def hostile_requests(draw: st.DrawFn, keys: Keys, inline_limit: int, max_body: int) -> Hostile:
    damaged = draw(st.sets(st.sampled_from(SITES), max_size=3))
    line = draw(_request_line("line" in damaged))
    body = draw(_body(inline_limit, max_body))
    framing, framing_lines, wire_body = draw(_framing(body, "framing" in damaged))
    lines = draw(
        st.permutations(
            draw(_host_lines("host" in damaged))
            + draw(_key_lines(keys, "key" in damaged))
            + framing_lines
            + draw(_extra_lines("headers" in damaged))
        )
    )
    lines += draw(_bulk_lines("bulk" in damaged))
    head = b"".join(h + b"\r\n" for h in (line, *lines)) + b"\r\n"
    total = len(head) + len(wire_body)
    cuts: list[int] = []
    pauses: list[float] = []
    if draw(st.integers(0, 2)):  # two in three go in pieces
        cuts = draw(st.lists(st.integers(1, max(1, total - 1)), max_size=6))
        # Pauses stay well under the request deadline: a slow client is its own test.
        pauses = draw(st.lists(st.floats(0, 0.04), min_size=len(cuts), max_size=len(cuts)))
    what = f"damaged {'+'.join(sorted(damaged)) or 'nowhere'}, framing {framing}"
    return Hostile(what, head, wire_body, tuple(cuts), tuple(pauses))
