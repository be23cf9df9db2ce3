"""The Redis intake's examples in docs/operations.md for other languages. PowerShell cannot
run here: its program is parsed with a real PowerShell grammar (tree-sitter's, as the
shipped scripts are) and the stream, fields and keys it uses are read off the syntax tree
and checked against what producer.intake reads and writes. The Go program is also compiled
and run against the lab's Redis (tests/integration/test_intake.py); here its literals are
checked the same way, so a machine without Go still checks them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

from producer import intake
from workers.model import keys

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def section() -> str:
    """The docs' "The Redis intake" section."""
    text = DOC.read_text()
    start = text.index("\n## The Redis intake\n")
    return text[start:text.index("\n## ", start + 1)]


def example(lang: str) -> str:
    """The one `lang` code block of the docs' "The Redis intake" section."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", section(), re.S)
    assert len(blocks) == 1, f"{len(blocks)} {lang} blocks in the intake section"
    return blocks[0]


def nodes(node: tree_sitter.Node, kind: str):
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == kind:
            yield n
        stack.extend(reversed(n.children))


def text(n: tree_sitter.Node) -> str:
    return n.text.decode()


def calls(tree, member: str) -> list[list[tree_sitter.Node]]:
    """The arguments of every `.member(...)` / `::member(...)` call, in order."""
    out = []
    for inv in nodes(tree.root_node, "invokation_expression"):
        names = [c for c in inv.children if c.type == "member_name"]
        if names and text(names[0]) == member:
            arglist = next(c for c in inv.children if c.type == "argument_list")
            args = [a for a in nodes(arglist, "argument_expression_list")][:1]
            out.append([c for c in args[0].children if c.type != ","] if args else [])
    return out


def literal(n: tree_sitter.Node) -> str | None:
    """The value of a single-quoted string argument, else None."""
    t = text(n)
    return t[1:-1].replace("''", "'") if len(t) >= 2 and t[0] == t[-1] == "'" else None


def syntax_errors(source: str) -> list[str]:
    """Every ERROR and MISSING node, as "line:col" (1-based)."""
    stack, found = [PARSER.parse(source.encode()).root_node], []
    while stack:
        n = stack.pop()
        if n.is_error or n.is_missing:
            found.append(f"{n.start_point[0] + 1}:{n.start_point[1] + 1}")
        stack.extend(n.children)
    return found


def powershell_problems(source: str) -> list[str]:
    """What is wrong with the PowerShell example, as the intake sees it ([] when nothing)."""
    errors = syntax_errors(source)
    if errors:
        return [f"does not parse: {errors}"]
    tree = PARSER.parse(source.encode())
    out = []
    adds = calls(tree, "StreamAdd")
    if [literal(a[0]) for a in adds] != [keys.REQUESTS]:
        out.append(f"StreamAdd to {[text(a[0]) for a in adds]}, not the one stream {keys.REQUESTS!r}")
    entries = [(literal(a[0]), text(a[1])) for a in calls(tree, "new") if len(a) == 2]
    names = [n for n, _ in entries]
    if sorted(n or "?" for n in names) != sorted(intake.FIELDS):
        out.append(f"fields {names}, not the intake's {list(intake.FIELDS)}")
    rid_var = dict(entries).get("request_id")
    gets = [text(a[0]) for a in calls(tree, "HashGetAll")]
    want_key = f'"{keys.request("")}{rid_var}"'
    if gets != [want_key]:
        out.append(f"HashGetAll of {gets}, not of {want_key} (the outcome of the request_id sent)")
    read = {text(m) for acc in nodes(tree.root_node, "member_access")
            if text(acc).startswith("$outcome.") for m in acc.children if m.type == "member_name"}
    if read - {"Count"} - set(intake.OUTCOME_FIELDS) or not {"state", "migration_id", "error"} <= read:
        out.append(f"reads the outcome's {sorted(read)}; it has {list(intake.OUTCOME_FIELDS)}")
    if "'accepted'" not in source:
        out.append("does not compare state with 'accepted'")
    return out


def test_the_powershell_example_parses_and_speaks_the_intakes_stream_fields_and_keys():
    source = example("powershell")
    assert powershell_problems(source) == []
    default = re.search(r"\[string\]\$Options = '([^']*)'", source).group(1)
    assert intake.options_of(default) == {}  # its default options are ones the intake takes
    usage = section().split("```powershell")[0].strip().rsplit("\n\n", 1)[1]
    given = re.search(r"-Options '([^']*)'", usage).group(1)
    assert intake.options_of(given) == {"max_downtime": "30s"}  # the documented call's options too


@pytest.mark.parametrize("broken", [
    ("a syntax error", "} until (", "} until (("),
    ("another stream", "StreamAdd('quickmig:requests'", "StreamAdd('quickmig:request'"),
    ("a misspelt field", "new('request_id'", "new('request-id'"),
    ("a field left out", "    [StackExchange.Redis.NameValueEntry]::new('vm', $Vm),\n", ""),
    ("another outcome key", '"quickmig:request:$RequestId"', '"quickmig:requests:$RequestId"'),
    ("an outcome field it lacks", "$outcome.migration_id", "$outcome.migrationId"),
], ids=lambda b: b[0])
def test_the_check_catches_a_broken_powershell_example(broken):
    what, old, new = broken
    source = example("powershell")
    assert old in source
    assert powershell_problems(source.replace(old, new, 1)), f"{what} went unnoticed"


def test_the_go_example_uses_the_intakes_stream_fields_and_keys():
    source = example("go")
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', source)
    assert keys.REQUESTS in strings and keys.request("") in strings
    xadd = re.search(r'redis\.Args\{"quickmig:requests", "\*", (.*?)\}', source, re.S).group(1)
    sent = re.findall(r'"([a-z_]+)", ', xadd) + re.findall(r'args\.Add\("([a-z_]+)"', source)
    assert sent == list(intake.FIELDS)
    read = set(re.findall(r'outcome\["([a-z_]+)"\]', source))
    assert {"state", "migration_id", "error"} == read and read <= set(intake.OUTCOME_FIELDS)
    assert '"accepted"' in source
