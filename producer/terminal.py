"""Text from hosts and records made safe to print on an operator's terminal.

A record carries text quickmig did not write: a host's error message, a VM name, a file
name, a reason. An escape sequence in it (ESC, CSI, OSC ...) would reach the terminal raw
and could retitle it, clear it, move the cursor over earlier lines or set the clipboard;
a bidirectional override could make a line read other than it is. Every control and
format character (Unicode categories Cc and Cf, so C0, DEL, C1, the bidi controls and
zero-width characters) is shown as its escape instead (`\\x1b`, `\\u202e`), so it is
visible and harmless; everything else, any language's letters included, is left as it is.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

# Cc is C0, DEL and C1; Cf is looked up only for the characters that can be in it
_CANDIDATES = re.compile("[\x00-\x1f\x7f-\x9f\xad\u0600-\U000e007f]")


def _unsafe(c: str) -> bool:
    return ord(c) < 0xa0 or unicodedata.category(c) == "Cf"


def _sub(s: str, escape: Callable[[int], str]) -> str:
    return _CANDIDATES.sub(lambda m: escape(ord(m.group())) if _unsafe(m.group()) else m.group(), s)


def _escape(c: int) -> str:
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


def text(value: object) -> str:
    """`value` as a string with every control and format character shown as its escape."""
    return _sub(value if isinstance(value, str) else str(value), _escape)


def clean(obj: Any) -> Any:
    """A copy of a record (dicts, lists, strings) whose strings, keys included, are `text`."""
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, dict):
        return {clean(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def _json_escape(c: int) -> str:
    if c < 0x10000:
        return f"\\u{c:04x}"
    c -= 0x10000
    return f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04x}"


def json_text(obj: Any) -> str:
    """JSON of `obj` (non-ASCII letters kept) with every control and format character as a
    \\u escape: the same document for a program, nothing a terminal acts on."""
    return _sub(json.dumps(obj, ensure_ascii=False, sort_keys=True), _json_escape)
