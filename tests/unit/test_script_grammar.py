"""Every shipped script parses under a real PowerShell grammar (tree-sitter's), as the host
will receive it: includes filled in, and with its arguments line rendered.

No PowerShell runs here, so this is the only check that a script is PowerShell at all
before a host sees it. A syntax error anywhere in a script would otherwise surface on a
real host only, as a parse error of the whole script (nothing in it runs).
"""
from __future__ import annotations

import pytest
import tree_sitter
import tree_sitter_powershell

from workers.hyperv import scripts

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def syntax_errors(text: str) -> list[str]:
    """Every ERROR and MISSING node of `text`, as "line:col what" (1-based); [] if it parses."""
    tree = PARSER.parse(text.encode("utf-8"))
    found: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            row, col = node.start_point
            what = f"missing {node.type}" if node.is_missing else f"cannot parse {node.text[:40]!r}"
            found.append(f"{row + 1}:{col + 1} {what}")
        stack.extend(node.children)
    return sorted(found, key=lambda s: tuple(int(x) for x in s.split(" ", 1)[0].split(":")))


@pytest.mark.parametrize("op", scripts.ops())
def test_every_shipped_script_is_valid_powershell(op):
    text = scripts.load(op)
    assert syntax_errors(text) == [], f"{op}.ps1 (with includes) does not parse"
    rendered = scripts.render(op, {"vm_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "name": "x'@\n$(y)"})
    assert syntax_errors(rendered) == [], f"{op}.ps1 with its arguments line does not parse"


@pytest.mark.parametrize("broken", [
    ("a missing closing brace", "}\n$result = ", "\n$result = "),
    ("an unterminated string", "$ProgressPreference = 'SilentlyContinue'", "$ProgressPreference = 'SilentlyContinue"),
    ("an unclosed parenthesis", "[ordered]@{", "[ordered]@{ x = (1 + "),
], ids=lambda b: b[0])
def test_the_check_catches_a_broken_script(broken):
    what, old, new = broken
    text = scripts.load("describe_vm")
    assert old in text
    assert syntax_errors(text.replace(old, new, 1)), f"{what} went unnoticed"
