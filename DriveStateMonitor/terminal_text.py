"""Text for a terminal: data from the network shown without the codes a terminal acts on.

Theory of operation
-------------------
Drive fields and statuses arrive by unauthenticated multicast and from any lab peer; Status Server
values are anyone's PUT. A terminal acts on control characters inside them: ESC starts sequences
that clear the screen (ESC [2J), retitle the window (ESC ]0;...BEL) or rewrite what is shown; CR
and BS move back over text already printed, hiding it; the C1 codes (U+0080-U+009F, such as U+009B,
a one-character CSI on some terminals) do what ESC sequences do; Unicode's bidirectional overrides
reorder text on screen. CVE-2021-25743 is kubectl's case of the same.

So every human-readable line dsmctl prints (tables, `find`, `get`, `ls`, `tree`, `stat`, `watch`, the
simulator's lines, and errors that echo what a DSM or server sent) passes through ONE function,
`escape_controls`: each such character becomes `\\xNN` (below U+0100) or `\\uNNNN`, the form NUL
always had in dsmctl's tables. A lone surrogate (JSON allows "\\ud800"; no encoder writes it) is
escaped the same way, so printing never fails on it. Backslashes are left alone: the escaped text is
for eyes, and `--json` (and `--csv`, which keeps every character but NUL) gives the exact data.

`json_text` is JSON for a terminal: json.dumps without ensure_ascii (names and values stay
readable), then the same characters written as JSON's `\\uNNNN` escapes, which decode to the same
data, so the output stays exact and valid JSON.
"""
import json
import re
from typing import Any

# C0 controls, DEL, C1 controls; the line and paragraph separators; Unicode's bidirectional marks,
# embeddings, overrides and isolates (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069); and
# lone surrogates (U+D800-U+DFFF).
TERMINAL_CONTROLS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# The same characters but the C0 ones, which json.dumps already escapes.
_JSON_UNESCAPED_CONTROLS = re.compile(
    "[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code


def escape_controls(text: str) -> str:
    """`text` with every character a terminal acts on (TERMINAL_CONTROLS) as `\\xNN`/`\\uNNNN`;
    everything else, backslashes included, unchanged. Safe for any str, lone surrogates too."""
    return TERMINAL_CONTROLS.sub(_escape, text)


def json_text(value: Any, ensure_ascii: bool = False, **dumps_options: Any) -> str:
    """json.dumps(value, ensure_ascii=ensure_ascii, **dumps_options) with DEL, the C1 controls, the
    separators, the bidirectional marks and lone surrogates written as `\\uNNNN`: the same JSON
    data, nothing a terminal acts on, and always encodable as UTF-8. (With ensure_ascii, json.dumps
    already escapes all of them but DEL.)"""
    text = json.dumps(value, ensure_ascii=ensure_ascii, **dumps_options)
    return _JSON_UNESCAPED_CONTROLS.sub(lambda match: "\\u%04x" % ord(match.group()), text)
