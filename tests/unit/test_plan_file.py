"""producer.plan_file: a plan in YAML or JSON, and one line naming the line and path of a bad field."""
import json
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

from producer import plan_file
from producer.plan_file import PlanError

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "plan.schema.json").read_text())
HOSTS = ["hv1", "hv2", "hv3"]
NOW = 1_790_000_000.0  # 2026-09-21, before the windows below

PLAN_YAML = """\
name: rack-7
concurrency: 3
on_failure: continue
defaults:
  max_downtime: 30s
  max_rounds: 2
groups:
  - name: db
    vms:
      - {vm: sql1, from: hv1, to: hv2}
      - vm: sql2
        from: hv1
        to: hv3
        max_rounds: 5
  - name: web
    after: [db]
    switchover: together
    vms:
      - {vm: web1, from: hv2, to: hv3}
      - {vm: web2, from: hv2, to: hv1}
"""


def test_a_plan_reads_the_same_from_yaml_and_json_with_overrides_over_defaults():
    y = plan_file.parse(PLAN_YAML, hosts=HOSTS, now=NOW)
    j = plan_file.parse(json.dumps(yaml.safe_load(PLAN_YAML), indent=2), as_json=True, hosts=HOSTS, now=NOW)
    assert [(m.key, m.source, m.destination, m.options) for m in y.members()] == \
        [(m.key, m.source, m.destination, m.options) for m in j.members()]
    assert (y.name, y.concurrency, y.on_failure) == ("rack-7", 3, "continue")
    assert y.group("web").after == ("db",) and y.group("web").switchover == "together"
    sql2 = y.members()[1]
    assert sql2.options == {"max_downtime": "30s", "max_rounds": 5}
    assert y.members()[0].options["max_rounds"] == 2


def test_defaults_when_left_out():
    p = plan_file.parse("name: p\ngroups: [{name: g, vms: [{vm: a, from: hv1, to: hv2}]}]", hosts=HOSTS)
    assert (p.concurrency, p.on_failure, p.groups[0].switchover) == (4, "stop", "independent")
    assert p.groups[0].prepared_wait_s is None


def test_a_together_group_may_wait_longer_for_its_members_within_the_barriers_life():
    from workers.coord.group_barrier import TTL_S
    p = plan_file.parse("name: p\ngroups: [{name: g, switchover: together, prepared_wait: 6h, "
                        "vms: [{vm: a, from: hv1, to: hv2}, {vm: b, from: hv1, to: hv3}]}]", hosts=HOSTS)
    assert p.groups[0].prepared_wait_s == 6 * 3600
    assert plan_file.PREPARED_WAIT_MAX_S * 2 <= TTL_S  # a waiting group's barrier outlives its bound


def test_the_shared_window_is_every_members_window():
    p = plan_file.parse("name: p\nwindow: {not_before: 2027-01-01T02:00:00Z, duration: 2h}\n"
                        "groups: [{name: g, vms: [{vm: a, from: hv1, to: hv2}]}]", hosts=HOSTS, now=NOW)
    assert p.members()[0].options == {"not_before": 1798768800.0, "window": 7200.0}


_G = "groups: [{name: g, vms: [{vm: a, from: hv1, to: hv2}]}]\n"

# (plan text, what the one line must say: the line and path of the bad field, whether the JSON
# Schema alone refuses it too: earlier groups, the inventory, a VM once and option values are the parser's)
BAD = [
    ("name: p\ngroups: []\n", "line 2 (groups): must be a list of at least one group", True),
    ("name: p\nconcurrency: 0\ngroups: [{name: g, vms: [{vm: a, from: hv1, to: hv2}]}]\n",
     "line 2 (concurrency): must be a whole number from 1 to 1000", True),
    ("name: p\non_failure: maybe\ngroups: [{name: g, vms: [{vm: a, from: hv1, to: hv2}]}]\n",
     "line 2 (on_failure): must be one of continue, stop", True),
    ("name: p\ngroups:\n  - name: g\n    vms:\n      - vm: a\n        from: hv1\n        to: hv9\n",
     "line 7 (groups[0].vms[0].to): unknown host 'hv9' (inventory has: hv1, hv2, hv3)", False),
    ("name: p\ngroups:\n  - name: g\n    vms:\n      - vm: a\n        from: hv1\n        to: hv2\n"
     "        max_downtime: soon\n",
     "line 8 (groups[0].vms[0].max_downtime): max_downtime must be a duration", False),
    ("name: p\ndefaults:\n  on_exceed: proceed\ngroups:\n  - name: g\n    vms: [{vm: a, from: hv1, to: hv2}]\n",
     "line 3 (defaults.on_exceed): on_exceed only means something with max_downtime", False),
    ("name: p\ngroups:\n  - name: g\n    after: [web]\n    vms: [{vm: a, from: hv1, to: hv2}]\n"
     "  - name: web\n    vms: [{vm: b, from: hv1, to: hv2}]\n",
     "line 4 (groups[0].after[0]): names 'web', which is not a group before this one", False),
    ("name: p\ngroups:\n  - name: g\n    switchover: all\n    vms: [{vm: a, from: hv1, to: hv2}]\n",
     "line 4 (groups[0].switchover): must be one of independent, together", True),
    ("name: p\ngroups:\n  - name: g\n    prepared_wait: 2h\n    vms: [{vm: a, from: hv1, to: hv2}]\n",
     "line 4 (groups[0].prepared_wait): bounds the wait of a group that switches over together; add "
     "switchover: together or drop it", True),
    ("name: p\ngroups:\n  - name: g\n    switchover: together\n    prepared_wait: soon\n"
     "    vms: [{vm: a, from: hv1, to: hv2}]\n",
     "line 5 (groups[0].prepared_wait): prepared_wait must be a duration such as 90s, 15m or 2h", True),
    ("name: p\ngroups:\n  - name: g\n    switchover: together\n    prepared_wait: 3d\n"
     "    vms: [{vm: a, from: hv1, to: hv2}]\n",
     "line 5 (groups[0].prepared_wait): must be at most 48h", False),
    ("name: p\ngroups:\n  - name: g\n    vms: [{vm: a, from: hv1, to: hv2}]\n"
     "  - name: g\n    vms: [{vm: b, from: hv1, to: hv2}]\n",
     "line 5 (groups[1].name): group 'g' is named twice", False),
    ("name: p\ngroups:\n  - name: g\n    vms:\n      - {vm: a, from: hv1, to: hv2}\n"
     "      - {vm: a, from: hv1, to: hv3}\n",
     "line 6 (groups[0].vms[1].vm): a on hv1 is already in this plan (groups[0].vms[0])", False),
    ("name: p\ngroups:\n  - name: g\n    vms:\n      - {vm: a, from: hv1, to: hv2, pre_cutover: x}\n",
     "line 5 (groups[0].vms[0].pre_cutover): unknown field 'pre_cutover'", True),
    ("name: p\nwindow: {not_before: 2027-01-01T02:00:00Z, duration: 2h}\ngroups:\n  - name: g\n"
     "    vms:\n      - {vm: a, from: hv1, to: hv2, window: 1h}\n",
     "line 6 (groups[0].vms[0].window): the plan's window is shared by every VM", False),
    ("name: p\nname: q\ngroups: []\n", "line 2 (name): 'name' is given twice", False),
    ("name: p\ngroups: [\n", "not valid YAML", False),
    ("name: 'bad name'\ngroups: [{name: g, vms: [{vm: a, from: hv1, to: hv2}]}]\n",
     "line 1 (name): must be a name", True),
    # hooks
    ("name: p\nhooks:\n  pre_cutover: {url: 'ftp://h/x', secret: s}\n" + _G,
     "line 3 (hooks.pre_cutover.url): must be an http:// or https:// URL, not 'ftp://h/x'", True),
    ("name: p\nhooks:\n  pre_cutover: {url: 'https://u:pw@h/x', secret: s}\n" + _G,
     "line 3 (hooks.pre_cutover.url): must not hold a user or password", True),
    ("name: p\nhooks:\n  pre_cutover:\n    url: http://h/x\n    secret: s\n    timeout_s: 0\n" + _G,
     "line 6 (hooks.pre_cutover.timeout_s): must be seconds above 0 and at most 300, not 0", True),
    ("name: p\nhooks:\n  post_cutover: {url: 'http://h/x'}\n" + _G,
     "line 3 (hooks.post_cutover): 'secret' is missing", True),
    ("name: p\nhooks:\n  post_cutover: {url: 'http://h/x', secret: 'hunter2 hunter2'}\n" + _G,
     "line 3 (hooks.post_cutover.secret): must name a [hooks.NAME] table of the credentials file", True),
    ("name: p\nhooks:\n  mid_cutover: {url: 'http://h/x', secret: s}\n" + _G,
     "line 3 (hooks.mid_cutover): unknown field 'mid_cutover' (known here: pre_cutover, post_cutover)", True),
    ("name: p\non_hook_failure: rollback\n" + _G,
     "line 2 (on_hook_failure): rollback is refused: a post_cutover hook runs once the destination VM has run",
     True),
    ("name: p\ngroups:\n  - name: g\n    hooks:\n      pre_cutover: {url: 'http://h/x', secret: s, timeout: 5}\n"
     "    vms: [{vm: a, from: hv1, to: hv2}]\n",
     "line 5 (groups[0].hooks.pre_cutover.timeout): unknown field 'timeout'", True),
]


@pytest.mark.parametrize(("text", "says", "schema_too"), BAD)
def test_a_bad_plan_is_one_line_naming_the_line_and_path(text, says, schema_too):
    with pytest.raises(PlanError) as e:
        plan_file.parse(text, source="plan.yaml", hosts=HOSTS, now=NOW)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("plan.yaml")
    assert says in msg


def test_a_bad_json_plan_names_its_line():
    text = '{"name": "p",\n "groups": [{"name": "g", "vms": [\n  {"vm": "a", "from": "hv1", "to": "hv1"}]}]}'
    with pytest.raises(PlanError, match=r"^plan.json line 3 \(groups\[0\]\.vms\[0\]\.to\): is the same host"):
        plan_file.parse(text, source="plan.json", as_json=True, hosts=HOSTS)
    with pytest.raises(PlanError, match=r"^plan.json line 2: not valid JSON"):
        plan_file.parse('{"name": "p",\n "groups": [}', source="plan.json", as_json=True)


def test_load_reads_a_file_and_refuses_a_missing_one(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(yaml.safe_load(PLAN_YAML)))
    assert len(plan_file.load(f, hosts=HOSTS).members()) == 4
    with pytest.raises(PlanError, match="cannot read the plan file"):
        plan_file.load(tmp_path / "nope.yaml")


def test_the_json_schema_accepts_the_plans_the_parser_accepts_and_refuses_what_it_can_express():
    v = jsonschema_rs.validator_for(SCHEMA)
    assert v.is_valid(yaml.safe_load(PLAN_YAML))
    for text, _, schema_too in BAD:
        if schema_too:
            assert not v.is_valid(yaml.safe_load(text)), text
    # the schema knows the same fields as the parser
    assert set(SCHEMA["properties"]) == set(plan_file.PLAN_FIELDS)
    assert set(SCHEMA["$defs"]["vm"]["properties"]) == set(plan_file.VM_FIELDS)
    assert set(SCHEMA["$defs"]["options"]["properties"]) == set(plan_file.OPTION_FIELDS)
    assert set(SCHEMA["$defs"]["group"]["properties"]) == set(plan_file.GROUP_FIELDS)
    assert set(SCHEMA["$defs"]["hooks"]["properties"]) == set(plan_file.HOOK_KINDS)
    assert set(SCHEMA["$defs"]["hook"]["properties"]) == set(plan_file.HOOK_FIELDS)
    assert v.is_valid(yaml.safe_load(HOOKS_YAML))


HOOKS_YAML = """\
name: with-hooks
on_hook_failure: continue
hooks:
  pre_cutover: {url: "https://cmdb.example/pre", secret: cmdb}
  post_cutover: {url: "https://cmdb.example/post", secret: cmdb, timeout_s: 30}
groups:
  - name: db
    vms: [{vm: sql1, from: hv1, to: hv2}]
  - name: web
    hooks:
      pre_cutover: {url: "http://lb.example/drain", secret: lb, timeout_s: 2.5}
    vms: [{vm: web1, from: hv2, to: hv3}]
"""


def test_hooks_are_the_plans_unless_a_group_names_its_own_kind():
    p = plan_file.parse(HOOKS_YAML, hosts=HOSTS)
    assert p.on_hook_failure == "continue"
    post = {"url": "https://cmdb.example/post", "timeout_s": 30.0, "secret": "cmdb"}
    assert p.group("db").hooks == {"pre_cutover": {"url": "https://cmdb.example/pre", "timeout_s": 10.0,
                                                   "secret": "cmdb"}, "post_cutover": post}
    assert p.group("web").hooks == {"pre_cutover": {"url": "http://lb.example/drain", "timeout_s": 2.5,
                                                    "secret": "lb"}, "post_cutover": post}
    assert plan_file.parse(_G.join(["name: p\n", ""]), hosts=HOSTS).group("g").hooks == {}
