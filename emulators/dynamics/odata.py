"""OData v4 pieces the Dataverse emulator understands: ``$filter`` expressions and key segments.

``$filter`` is parsed into a small tree, which is then either compiled to SQL (record queries)
or evaluated in Python (metadata queries, where the rows are plain dicts). Supported: ``eq ne gt
ge lt le``, ``and or not``, parentheses, ``null``, ``true``/``false``, numbers, quoted strings
(``''`` escapes a quote), unquoted GUIDs and date-times, and ``contains``/``startswith``/
``endswith``. That is what a sync sends (``dynamics-web-api.md`` §3.1).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from emulators.dynamics.errors import ODataError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^']|'')*')
      | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
      | (?P<dt>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?(?![\w:]))
      | (?P<num>-?\d+(?:\.\d+)?(?![\w.]))
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_@$][\w.@/]*)
    )""",
    re.VERBOSE,
)

COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
FUNCTIONS = frozenset({"contains", "startswith", "endswith"})


@dataclass(frozen=True)
class Literal:
    """A constant: ``kind`` is ``str``, ``guid``, ``datetime``, ``number``, ``bool`` or ``null``."""

    kind: str
    value: Any


@dataclass(frozen=True)
class Prop:
    """A property reference (a column name as the client wrote it)."""

    name: str


Node = tuple[Any, ...]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ODataError(400, "0x80060888", f"Syntax error at position {pos} in $filter: {text!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ODataError(400, "0x80060888", f"Unexpected end of $filter expression: {self.text!r}")
        self.pos += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok[1] != value:
            raise ODataError(
                400, "0x80060888", f"Expected {value!r} but found {tok[1]!r} in $filter: {self.text!r}"
            )

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok and tok[0] == "word" and tok[1].lower() == word:
            self.pos += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek() is not None:
            raise ODataError(400, "0x80060888", f"Unexpected {self.peek()[1]!r} in $filter: {self.text!r}")  # type: ignore[index]
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.keyword("or"):
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self.keyword("and"):
            node = ("and", node, self.not_expr())
        return node

    def not_expr(self) -> Node:
        if self.keyword("not"):
            return ("not", self.not_expr())
        return self.primary()

    def primary(self) -> Node:
        tok = self.peek()
        if tok and tok[1] == "(":
            self.take()
            node = self.or_expr()
            self.expect(")")
            return node
        if tok and tok[0] == "word" and tok[1].lower() in FUNCTIONS:
            name = self.take()[1].lower()
            self.expect("(")
            prop = self.operand()
            self.expect(",")
            value = self.operand()
            self.expect(")")
            if not isinstance(prop, Prop) or not isinstance(value, Literal) or value.kind != "str":
                raise ODataError(400, "0x80060888", f"{name}() needs a property and a string: {self.text!r}")
            return ("func", name, prop, value)
        left = self.operand()
        op_tok = self.take()
        op = op_tok[1].lower()
        if op not in COMPARISONS:
            raise ODataError(400, "0x80060888", f"Unknown operator {op_tok[1]!r} in $filter: {self.text!r}")
        right = self.operand()
        if isinstance(left, Literal) and isinstance(right, Prop):
            left, right = right, left
            op = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}.get(op, op)
        if not isinstance(left, Prop) or not isinstance(right, Literal):
            raise ODataError(
                400, "0x80060888", f"Compare a property with a constant in $filter: {self.text!r}"
            )
        return ("cmp", op, left, right)

    def operand(self) -> Prop | Literal:
        kind, raw = self.take()
        if kind == "str":
            return Literal("str", raw[1:-1].replace("''", "'"))
        if kind == "guid":
            return Literal("guid", raw.lower())
        if kind == "dt":
            return Literal("datetime", raw)
        if kind == "num":
            return Literal("number", float(raw) if "." in raw else int(raw))
        if kind == "word":
            low = raw.lower()
            if low == "null":
                return Literal("null", None)
            if low in ("true", "false"):
                return Literal("bool", low == "true")
            return Prop(raw)
        raise ODataError(400, "0x80060888", f"Unexpected {raw!r} in $filter: {self.text!r}")


def parse_filter(text: str) -> Node:
    """Parse a ``$filter`` value into a tree of tuples.

    Raises:
        ODataError: 400 with a message naming the offending part.
    """
    return _Parser(text).parse()


def filter_props(node: Node) -> set[str]:
    """Return every property name a filter tree refers to."""
    tag = node[0]
    if tag in ("and", "or"):
        return filter_props(node[1]) | filter_props(node[2])
    if tag == "not":
        return filter_props(node[1])
    return {node[2].name}


def normalize_datetime(text: str) -> str:
    """Return ``text`` as the emulator stores date-times: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC.

    A date alone stays a date (``YYYY-MM-DD``), as Dataverse's date-only columns hold it.
    """
    if len(text) == 10:
        dt.date.fromisoformat(text)
        return text
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def evaluate(node: Node, row: dict[str, Any]) -> bool:
    """Evaluate a filter tree against a plain dict (used for metadata queries)."""
    tag = node[0]
    if tag == "and":
        return evaluate(node[1], row) and evaluate(node[2], row)
    if tag == "or":
        return evaluate(node[1], row) or evaluate(node[2], row)
    if tag == "not":
        return not evaluate(node[1], row)
    value = row.get(node[2].name)
    if isinstance(value, dict) and "Value" in value:  # managed properties such as IsCustomizable
        value = value["Value"]
    if tag == "func":
        needle = str(node[3].value).lower()
        hay = str(value or "").lower()
        return {
            "contains": needle in hay,
            "startswith": hay.startswith(needle),
            "endswith": hay.endswith(needle),
        }[node[1]]
    op, lit = node[1], node[3].value
    if isinstance(value, str) and isinstance(lit, str):
        value, lit = value.lower(), lit.lower()
    if op == "eq":
        return bool(value == lit)
    if op == "ne":
        return bool(value != lit)
    if value is None or lit is None:
        return False
    try:
        return bool({"gt": value > lit, "ge": value >= lit, "lt": value < lit, "le": value <= lit}[op])
    except TypeError:
        return False


_KEY_PART = re.compile(r"\s*(\w+)\s*=\s*('(?:[^']|'')*'|[^,]+?)\s*(?:,|$)")
GUID_RE = re.compile(r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$")


def parse_key(text: str) -> str | dict[str, str]:
    """Parse what is inside ``(...)`` of a key segment.

    Returns a lower-case GUID for ``(guid)`` or a dict for an alternate key
    ``(col='v',col2='w')`` / ``(LogicalName='lead')``.

    Raises:
        ODataError: 400 when the segment is neither.
    """
    text = text.strip()
    guid = GUID_RE.match(text)
    if guid:
        return guid.group(1).lower()
    parts: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _KEY_PART.match(text, pos)
        if not match:
            raise ODataError(400, "0x80060888", f"Bad key segment ({text})")
        raw = match.group(2)
        parts[match.group(1)] = raw[1:-1].replace("''", "'") if raw.startswith("'") else raw
        pos = match.end()
    if not parts:
        raise ODataError(400, "0x80060888", f"Bad key segment ({text})")
    return parts


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses and quotes (for ``$expand`` and ``$select`` lists)."""
    parts: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts
