"""deploy/compose/compose.yaml: valid against the Compose Specification's JSON Schema
(tests/data/compose_spec.json, see tests/data/README.md), and consistent with quickmig: one
service per pool consuming its queue, the cutover pool's stop grace as long as on
Kubernetes, the secrets it names defined, the example config and credentials loadable."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.kustomize import load_docs
from workers.model import config as config_mod
from workers.model import routing

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())


def schema_problems(doc: dict) -> list[str]:
    v = jsonschema.Draft201909Validator(SCHEMA)  # the draft its $schema names
    return [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(doc)]


def seconds(text: str) -> int:
    m = re.fullmatch(r"(\d+)s", text)
    assert m, text
    return int(m.group(1))


def quickmig_problems(doc: dict) -> list[str]:
    out = []
    services = doc["services"]
    queues = {}
    for name, s in services.items():
        cmd = s.get("command", [])
        if "-Q" in cmd:
            queues[cmd[cmd.index("-Q") + 1]] = name
        for sec in s.get("secrets", []):
            if (sec if isinstance(sec, str) else sec["source"]) not in doc.get("secrets", {}):
                out.append(f"{name}: secret {sec} is not defined")
    if sorted(queues) != sorted(routing.QUEUES):
        out.append(f"pools {sorted(queues)}, not one per queue {sorted(routing.QUEUES)}")
    cutover = load_docs(ROOT / "deploy" / "kubernetes" / "base" / "worker-cutover.yaml")[0]
    grace = cutover["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if "cutover" in queues and seconds(services[queues["cutover"]].get("stop_grace_period", "10s")) < grace:
        out.append(f"the cutover pool's stop_grace_period is shorter than the switchover's {grace} s")
    beats = [n for n, s in services.items() if " beat " in f" {' '.join(s.get('command', []))} "]
    if len(beats) != 1:
        out.append(f"{len(beats)} beat services, not exactly one")
    fleet = [n for n, s in services.items() if "--fleet" in s.get("command", [])]
    if len(fleet) != 1:
        out.append(f"{len(fleet)} fleet exporters, not exactly one")
    return out


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def test_the_compose_file_passes_the_compose_specification_schema(doc):
    assert doc["services"] and schema_problems(doc) == []


def test_the_compose_file_runs_each_pool_once_and_drains_the_cutover(doc):
    assert quickmig_problems(doc) == []


def test_a_broken_compose_file_is_caught(doc):
    bad = json.loads(json.dumps(doc))
    bad["services"]["copy"]["stop_grace_perod"] = "300s"
    bad["services"]["api"]["ports"] = "8780"
    found = schema_problems(bad)
    assert any("stop_grace_perod" in p for p in found) and any("ports" in p for p in found), found
    bad = json.loads(json.dumps(doc))
    bad["services"]["cutover"]["stop_grace_period"] = "300s"
    bad["services"]["copy"]["command"][bad["services"]["copy"]["command"].index("copy")] = "kopy"
    bad["services"]["beat2"] = bad["services"]["beat"]
    bad["services"]["api"]["secrets"] = ["api-token"]
    found = quickmig_problems(bad)
    assert len(found) == 4, found


def test_the_example_config_and_credentials_load_as_a_worker_reads_them(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    shutil.copy(COMPOSE / "secrets" / "credentials.toml.example", secrets / "credentials.toml")
    for name, text in {"winrm-password": "w", "smb-password": "s", "redis-password": "r"}.items():
        (secrets / name).write_text(text + "\n")
    for f in secrets.iterdir():
        f.chmod(0o400)
    toml = (COMPOSE / "quickmig.toml").read_text()
    assert '"/run/secrets/credentials.toml"' in toml  # where compose mounts the secret
    (tmp_path / "quickmig.toml").write_text(toml.replace("/run/secrets/", f"{secrets}/"))
    cfg = config_mod.load_config(tmp_path / "quickmig.toml")
    cfg.check_credentials()
    assert cfg.redis_credentials() == ("quickmig", "r")
