"""The plan file: many migrations in ordered groups, read from YAML or JSON.

A plan has a name, `concurrency` (its migrations at once; host limits still hold),
`on_failure` (continue or stop), `defaults` for every migration option, an optional
shared cutover `window`, optional `hooks` (pre_cutover and post_cutover HTTP callouts:
`url`, `timeout_s`, `secret` naming a `[hooks.NAME]` table of the credentials file) with
`on_hook_failure`, and `groups` in order; a group has a name, `vms` (each `vm`,
`from`, `to` and any migration option that overrides the defaults), `after` (groups that
must have completed first), `switchover` (independent or together) and its own `hooks`
(each kind it names replaces the plan's). docs/plan.schema.json
is the same grammar as a JSON Schema, for editors and other tools.

Every refusal is one PlanError line naming where the bad field is: the file's line when the
parser kept it, and always its path (groups[1].vms[0].to), so a plan of a thousand VMs
is fixed without a search.
"""
from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from workers.model import options as options_mod
from workers.model.errors import QuickmigError

# The migration options a plan's defaults or a VM may set: the keyword arguments of
# workers.model.options.parse, under the same names.
OPTION_FIELDS = ("max_downtime", "on_exceed", "max_rounds", "not_before", "window", "keep_source_hours",
                 "destination_path", "storage_map", "switch_map", "eject_unmovable_isos")
# How options.parse names each option in its messages (the CLI's flags) -> the plan's field.
_FLAG_FIELD = {"--max-downtime": "max_downtime", "--on-exceed": "on_exceed", "--max-rounds": "max_rounds",
               "--not-before": "not_before", "--window": "window", "--keep-source": "keep_source_hours",
               "--destination-path": "destination_path", "--storage-map": "storage_map",
               "--switch-map": "switch_map", "--eject-unmovable-isos": "eject_unmovable_isos"}
PLAN_FIELDS = ("name", "concurrency", "on_failure", "on_hook_failure", "defaults", "window", "hooks", "groups")
GROUP_FIELDS = ("name", "vms", "after", "switchover", "prepared_wait", "hooks")
HOOK_KINDS = ("pre_cutover", "post_cutover")
HOOK_FIELDS = ("url", "timeout_s", "secret")
HOOK_TIMEOUT_S_DEFAULT = 10.0
HOOK_TIMEOUT_S_MAX = 300.0  # a pre-cutover hook holds a copy worker that long at most
# What a post-cutover hook's failure does. Not `rollback`: the destination VM has run, and its
# guest may have acknowledged writes the source's saved state lacks; going back would lose them
# (the reason the cutover itself rolls forward once the destination VM started).
ON_HOOK_FAILURE = ("continue",)
NO_ROLLBACK_AFTER_START = ("rollback is refused: a post_cutover hook runs once the destination VM has run, "
                           "and its guest may have acknowledged writes the source lacks; going back would "
                           "lose them (use continue, and roll back by hand if the hook's check says so)")
WINDOW_FIELDS = ("not_before", "duration")
VM_FIELDS = ("vm", "from", "to", *OPTION_FIELDS)
ON_FAILURE = ("continue", "stop")
SWITCHOVER = ("independent", "together")
# a together group's own bound on its wait at `prepared` (docs/plans.md, "Bounds") is at most
# this: well inside the life of the group's barrier in Redis (workers.coord.group_barrier.TTL_S)
PREPARED_WAIT_MAX_S = 48 * 3600.0
DEFAULT_CONCURRENCY = 4
DEFAULT_ON_FAILURE = "stop"  # the safer reading: a failure stops what has not started yet
MAX_CONCURRENCY = 1000
MAX_MEMBERS = 10000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PlanError(QuickmigError):
    """The plan file cannot be used as written; the message says where and what to fix."""


@dataclass(frozen=True)
class Member:
    group: str
    vm: str
    source: str
    destination: str
    options: dict[str, Any]  # raw migration options (defaults, window and overrides merged), checked
    where: str               # where the VM's entry is in the file, for messages

    @property
    def key(self) -> str:
        return f"{self.group}/{self.vm}"


@dataclass(frozen=True)
class Group:
    name: str
    switchover: str
    after: tuple[str, ...]
    members: tuple[Member, ...]
    # pre_cutover / post_cutover -> {url, timeout_s, secret}: the group's own, else the plan's
    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # a together group's bound on its wait at `prepared` (None: the default, workers.engine.together.prepared_wait_s)
    prepared_wait_s: float | None = None


@dataclass(frozen=True)
class Plan:
    name: str
    concurrency: int
    on_failure: str
    groups: tuple[Group, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    window: dict[str, Any] | None = None
    on_hook_failure: str = "continue"

    def members(self) -> list[Member]:
        return [m for g in self.groups for m in g.members]

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)


def load(path: str | Path, hosts: Collection[str] | None = None, now: float | None = None) -> Plan:
    """Read and check a plan file (.json: JSON; anything else: YAML, of which JSON is a subset).
    `hosts`: the inventory's names, to refuse a VM's `from` or `to` outside it."""
    data, lines, source = _decode(path)
    return _Checker(source, lines, hosts, now).plan(data)


def load_data(path: str | Path, hosts: Collection[str] | None = None, now: float | None = None) -> Any:
    """The plan file checked as `load` checks it, as the decoded document (what the HTTP API
    takes as its body)."""
    data, lines, source = _decode(path)
    _Checker(source, lines, hosts, now).plan(data)
    return data


def _decode(path: str | Path) -> tuple[Any, dict[tuple, int], str]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"cannot read the plan file {p}: {getattr(e, 'strerror', None) or e}") from None
    data, lines = _read_json(text, str(p)) if p.suffix.lower() == ".json" else _read_yaml(text, str(p))
    return data, lines, str(p)


def parse(text: str, *, source: str = "plan", as_json: bool = False, hosts: Collection[str] | None = None,
          now: float | None = None) -> Plan:
    data, lines = _read_json(text, source) if as_json else _read_yaml(text, source)
    return _Checker(source, lines, hosts, now).plan(data)


def from_data(data: Any, *, source: str = "plan", hosts: Collection[str] | None = None,
              now: float | None = None) -> Plan:
    """A plan already decoded (an HTTP request's JSON body): the messages name the path alone."""
    return _Checker(source, {}, hosts, now).plan(data)


def _read_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PlanError(f"{source}: the plan file is empty")
        lines: dict[tuple, int] = {(): node.start_mark.line + 1}
        return _walk(loader, node, (), lines, source), lines
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PlanError(f"{source}{where}: not valid YAML ({e.problem or e.context})") from None
    except yaml.YAMLError as e:
        raise PlanError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    finally:
        loader.dispose()


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: tuple, lines: dict[tuple, int], source: str) -> Any:
    """The node's value, noting the line of every mapping key and list item under `path`."""
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode) if isinstance(knode, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise PlanError(f"{source} line {knode.start_mark.line + 1} ({_path(path) or 'top level'}): "
                                "field names must be plain text")
            if key in out:
                raise PlanError(f"{source} line {knode.start_mark.line + 1} ({_path((*path, key))}): "
                                f"{key!r} is given twice")
            lines[(*path, key)] = knode.start_mark.line + 1
            out[key] = _walk(loader, vnode, (*path, key), lines, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            items.append(_walk(loader, item, (*path, i), lines, source))
        return items
    value = loader.construct_object(node)
    # YAML reads an unquoted 2026-12-05T02:00:00Z as a time: give the options the text back
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _read_json(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    def no_twice(pairs: list[tuple[str, Any]]) -> dict:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise PlanError(f"{source}: {k!r} is given twice in one object")
            out[k] = v
        return out
    try:
        data = json.loads(text, object_pairs_hook=no_twice)
    except json.JSONDecodeError as e:
        raise PlanError(f"{source} line {e.lineno}: not valid JSON ({e.msg})") from None
    # JSON's own parser keeps no lines; YAML's reads the same text and does (best effort:
    # without it the messages name the path alone)
    try:
        _, lines = _read_yaml(text, source)
    except PlanError:
        lines = {}
    return data, lines


def _path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Checker:
    def __init__(self, source: str, lines: dict[tuple, int], hosts: Collection[str] | None, now: float | None):
        self.source, self.lines, self.hosts, self.now = source, lines, hosts, now

    def at(self, path: tuple) -> str:
        line = self.lines.get(path)
        where = _path(path) or "top level"
        return f"{self.source} line {line} ({where})" if line else f"{self.source} ({where})"

    def fail(self, path: tuple, what: str) -> PlanError:
        return PlanError(f"{self.at(path)}: {what}")

    def mapping(self, value: Any, path: tuple, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping of {', '.join(allowed)}")
        for k in value:
            if k not in allowed:
                raise self.fail((*path, k), f"unknown field {k!r} (known here: {', '.join(allowed)})")
        for k in required:
            if k not in value:
                raise self.fail(path, f"{k!r} is missing")
        return value

    def name(self, value: Any, path: tuple) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            raise self.fail(path, "must be a name of letters, digits, '.', '_' or '-' (at most 64, "
                                  f"starting with a letter or digit), not {value!r}")
        return value

    def text(self, value: Any, path: tuple) -> str:
        if not isinstance(value, str) or not value.strip() or value.strip() != value:
            raise self.fail(path, f"must be non-empty text without surrounding spaces, not {value!r}")
        return value

    def choice(self, value: Any, path: tuple, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(path, f"must be one of {', '.join(allowed)}, not {value!r}")
        return str(value)

    def plan(self, data: Any) -> Plan:
        top = self.mapping(data, (), PLAN_FIELDS, ("name", "groups"))
        name = self.name(top["name"], ("name",))
        concurrency = top.get("concurrency", DEFAULT_CONCURRENCY)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) \
                or not 1 <= concurrency <= MAX_CONCURRENCY:
            raise self.fail(("concurrency",), f"must be a whole number from 1 to {MAX_CONCURRENCY}, "
                                              f"not {concurrency!r}")
        on_failure = self.choice(top.get("on_failure", DEFAULT_ON_FAILURE), ("on_failure",), ON_FAILURE)
        defaults = self.mapping(top.get("defaults", {}), ("defaults",), OPTION_FIELDS, ())
        window = self.window(top.get("window"))
        if top.get("on_hook_failure") == "rollback":
            raise self.fail(("on_hook_failure",), NO_ROLLBACK_AFTER_START)
        on_hook_failure = self.choice(top.get("on_hook_failure", "continue"), ("on_hook_failure",), ON_HOOK_FAILURE)
        hooks = self.hooks(top.get("hooks"), ("hooks",))
        groups_raw = top["groups"]
        if not isinstance(groups_raw, list) or not groups_raw:
            raise self.fail(("groups",), "must be a list of at least one group")
        groups: list[Group] = []
        seen_vms: dict[tuple[str, str], str] = {}
        for i, g in enumerate(groups_raw):
            groups.append(self.group(g, ("groups", i), [x.name for x in groups], defaults, window, seen_vms, hooks))
        if len(seen_vms) > MAX_MEMBERS:
            raise self.fail(("groups",), f"has {len(seen_vms)} VMs; a plan holds at most {MAX_MEMBERS}")
        return Plan(name=name, concurrency=concurrency, on_failure=on_failure, groups=tuple(groups),
                    defaults=dict(defaults), window=window, on_hook_failure=on_hook_failure)

    def hooks(self, raw: Any, path: tuple) -> dict[str, dict[str, Any]]:
        """`hooks: {pre_cutover: {url, timeout_s, secret}, post_cutover: ...}`; `secret` names the
        credentials file's `[hooks.NAME]` table (the secret itself is never in the plan)."""
        if raw is None:
            return {}
        h = self.mapping(raw, path, HOOK_KINDS, ())
        out = {}
        for kind, one in h.items():
            where = (*path, kind)
            hook = self.mapping(one, where, HOOK_FIELDS, ("url", "secret"))
            url = hook["url"]
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise self.fail((*where, "url"), f"must be an http:// or https:// URL, not {url!r}")
            if parts.username is not None or parts.password is not None:
                raise self.fail((*where, "url"), "must not hold a user or password (the plan is stored in "
                                                 "Redis); the hook's secret goes in the credentials file")
            timeout = hook.get("timeout_s", HOOK_TIMEOUT_S_DEFAULT)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                    or not 0 < timeout <= HOOK_TIMEOUT_S_MAX:
                raise self.fail((*where, "timeout_s"), f"must be seconds above 0 and at most "
                                                       f"{HOOK_TIMEOUT_S_MAX:g}, not {timeout!r}")
            secret = hook["secret"]
            if not isinstance(secret, str) or not _NAME.match(secret):
                raise self.fail((*where, "secret"), "must name a [hooks.NAME] table of the credentials file "
                                                    f"(letters, digits, '.', '_' or '-'), not {secret!r}")
            out[kind] = {"url": url, "timeout_s": float(timeout), "secret": secret}
        return out

    def window(self, raw: Any) -> dict[str, Any] | None:
        if raw is None:
            return None
        w = self.mapping(raw, ("window",), WINDOW_FIELDS, WINDOW_FIELDS)
        try:
            opts = options_mod.parse(not_before=w["not_before"], window=w["duration"], now=self.now)
        except (options_mod.OptionError, TypeError, ValueError) as e:
            bad = "not_before" if "--not-before" in str(e) else "duration"
            raise self.fail(("window", bad), _plain(str(e))) from None
        return {"not_before": opts["not_before"], "window_s": opts["window_s"]}

    def group(self, raw: Any, path: tuple, earlier: list[str], defaults: dict, window: dict | None,
              seen_vms: dict[tuple[str, str], str], plan_hooks: dict[str, dict[str, Any]]) -> Group:
        g = self.mapping(raw, path, GROUP_FIELDS, ("name", "vms"))
        name = self.name(g["name"], (*path, "name"))
        if name in earlier:
            raise self.fail((*path, "name"), f"group {name!r} is named twice")
        after = g.get("after", [])
        if not isinstance(after, list):
            raise self.fail((*path, "after"), "must be a list of group names")
        for j, a in enumerate(after):
            if a not in earlier:
                what = ("cannot follow itself" if a == name else
                        f"names {a!r}, which is not a group before this one (after names earlier groups: "
                        f"{', '.join(earlier) or 'none'})")
                raise self.fail((*path, "after", j), what)
        switchover = self.choice(g.get("switchover", "independent"), (*path, "switchover"), SWITCHOVER)
        prepared_wait_s = None
        if "prepared_wait" in g:
            if switchover != "together":
                raise self.fail((*path, "prepared_wait"), "bounds the wait of a group that switches over "
                                                          "together; add switchover: together or drop it")
            try:
                prepared_wait_s = options_mod.duration_s(g["prepared_wait"], "prepared_wait")
            except options_mod.OptionError as e:
                raise self.fail((*path, "prepared_wait"), _plain(str(e))) from None
            if prepared_wait_s > PREPARED_WAIT_MAX_S:
                raise self.fail((*path, "prepared_wait"), f"must be at most {PREPARED_WAIT_MAX_S // 3600:g}h: the "
                                                          "members keep their checkpoints and places while they wait")
        hooks = {**plan_hooks, **self.hooks(g.get("hooks"), (*path, "hooks"))}
        vms = g["vms"]
        if not isinstance(vms, list) or not vms:
            raise self.fail((*path, "vms"), "must be a list of at least one VM")
        members = tuple(self.member(v, (*path, "vms", j), name, defaults, window, seen_vms)
                        for j, v in enumerate(vms))
        return Group(name=name, switchover=switchover, after=tuple(dict.fromkeys(after)), members=members,
                     hooks=hooks, prepared_wait_s=prepared_wait_s)

    def member(self, raw: Any, path: tuple, group: str, defaults: dict, window: dict | None,
               seen_vms: dict[tuple[str, str], str]) -> Member:
        v = self.mapping(raw, path, VM_FIELDS, ("vm", "from", "to"))
        vm = self.text(v["vm"], (*path, "vm"))
        src, dst = self.text(v["from"], (*path, "from")), self.text(v["to"], (*path, "to"))
        if self.hosts is not None:
            for role, host in (("from", src), ("to", dst)):
                if host not in self.hosts:
                    raise self.fail((*path, role), f"unknown host {host!r} (inventory has: "
                                                   f"{', '.join(sorted(self.hosts))})")
        if src == dst:
            raise self.fail((*path, "to"), f"is the same host as from ({src}); choose another destination")
        if (vm, src) in seen_vms:
            raise self.fail((*path, "vm"), f"{vm} on {src} is already in this plan ({seen_vms[(vm, src)]})")
        seen_vms[(vm, src)] = _path(path)
        overrides = {k: v[k] for k in OPTION_FIELDS if k in v}
        if window is not None:
            for k in ("not_before", "window"):
                for where, given in ((path, overrides), (("defaults",), defaults)):
                    if k in given:
                        raise self.fail((*where, k), "the plan's window is shared by every VM; "
                                                     "drop this field or the plan's window")
        merged = {**defaults, **overrides}
        if window is not None:
            merged["not_before"], merged["window"] = window["not_before"], window["window_s"]
        try:
            options_mod.parse(**merged, now=self.now)
        except (options_mod.OptionError, TypeError, ValueError) as e:
            msg = str(e)
            flag = min((f for f in _FLAG_FIELD if f in msg), key=msg.index, default=None)  # the first named
            key = _FLAG_FIELD[flag] if flag else None
            where = (*path, key) if key in overrides else ("defaults", key) if key in defaults else path
            raise self.fail(where, _plain(str(e))) from None
        return Member(group=group, vm=vm, source=src, destination=dst, options=merged, where=self.at(path))


def _plain(message: str) -> str:
    """options.parse speaks of the CLI's flags; a plan has fields of the same meaning."""
    for flag, key in _FLAG_FIELD.items():
        message = message.replace(flag, key)
    return message
