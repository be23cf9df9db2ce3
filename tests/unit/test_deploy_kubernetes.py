"""deploy/kubernetes/: every overlay renders (tests/kustomize.py), every object passes the
Kubernetes schemas of KUBERNETES_VERSION (kubernetes-validate, offline, strict), the KEDA and
PodMonitor objects their CRDs' schemas (tests/data/), and the objects agree with each other
and with the code: names referenced exist, selectors select, KEDA watches the queues the
pools consume in the Redis quickmig.toml names, ports are the code's, and the cutover pool
drains within its grace. Each check is also shown to fail on a broken manifest."""
from __future__ import annotations

import base64
import copy
import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest

from tests.kustomize import KustomizeError, render
from workers.hyperv import driver
from workers.model import config as config_mod
from workers.model import redis_endpoint, routing
from workers.steps import cutover

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DATA = ROOT / "tests" / "data"
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ["lab", "production", "sentinel"]
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): "keda_scaledobject.schema.json",
               ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda_triggerauthentication.schema.json",
               ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus_podmonitor.schema.json"}
SECRET_FILES = {"winrm-password": "w", "smb-password": "s", "redis-username": "quickmig", "redis-password": "r",
                "redis-ca.pem": "-----BEGIN CERTIFICATE-----\n", "redis-sentinel-username": "quickmig-sentinel",
                "redis-sentinel-password": "sp"}
POOLS = {f"quickmig-worker-{q}": q for q in routing.QUEUES}


def overlay_tree(tmp_path: Path, name: str) -> Path:
    """A copy of deploy/kubernetes with placeholder files where an operator puts the secrets
    (in every overlay's secrets/: one overlay may build on another)."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("README.md", ".gitignore"))
    for secrets in (tree / "overlays").glob("*/secrets"):
        for n, text in SECRET_FILES.items():
            (secrets / n).write_text(text)
    return tree / "overlays" / name


@pytest.fixture(params=OVERLAYS)
def rendered(request, tmp_path) -> tuple[str, list[dict]]:
    return request.param, render(overlay_tree(tmp_path, request.param))


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_spec(o: dict) -> dict:
    return o["spec"]["template"]["spec"]


def containers(o: dict) -> list[dict]:
    return pod_spec(o).get("initContainers", []) + pod_spec(o)["containers"]


# -- the checks: each returns what is wrong, [] when nothing

def schema_problems(objs: list[dict]) -> list[str]:
    out = []
    for o in objs:
        key = (o["apiVersion"], o["kind"])
        where = f"{o['kind']}/{o['metadata']['name']}"
        if key in CRD_SCHEMAS:
            schema = json.loads((DATA / CRD_SCHEMAS[key]).read_text())
            out += [f"{where}: {e.message} at {list(e.absolute_path)}"
                    for e in jsonschema.Draft202012Validator(schema).iter_errors(o)]
            continue
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            out.append(f"{where}: {e.message} at {list(e.path)}")
    return out


def reference_problems(objs: list[dict]) -> list[str]:
    out = []
    for name, d in by_kind(objs, "Deployment").items():
        out += _pod_reference_problems(objs, f"Deployment/{name}", d)
    out += _selector_problems(objs)
    for name, ta in by_kind(objs, "TriggerAuthentication").items():
        for ref in ta["spec"]["secretTargetRef"]:
            if ref["key"] not in by_kind(objs, "Secret").get(ref["name"], {}).get("data", {}):
                out.append(f"TriggerAuthentication/{name}: Secret {ref['name']} has no key {ref['key']}")
    out += _scaling_problems(objs, by_kind(objs, "Deployment"))
    return out


def _pod_reference_problems(objs: list[dict], where: str, d: dict) -> list[str]:
    """The Deployment selects its own pods; the account, Secrets, ConfigMaps (and keys),
    and volumes its pods name exist."""
    out = []
    secrets, cms = by_kind(objs, "Secret"), by_kind(objs, "ConfigMap")
    spec = pod_spec(d)
    sel, labels = d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        out.append(f"{where}: selector {sel} does not match its pods' labels {labels}")
    if spec.get("serviceAccountName") not in by_kind(objs, "ServiceAccount"):
        out.append(f"{where}: no ServiceAccount {spec.get('serviceAccountName')}")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for v in vols.values():
        if "secret" in v and v["secret"]["secretName"] not in secrets:
            out.append(f"{where}: no Secret {v['secret']['secretName']}")
        if "configMap" in v and v["configMap"]["name"] not in cms:
            out.append(f"{where}: no ConfigMap {v['configMap']['name']}")
    for c in containers(d):
        for m in c.get("volumeMounts", []):
            vol = vols.get(m["name"])
            if vol is None:
                out.append(f"{where}: container {c['name']} mounts no volume {m['name']}")
            elif "subPath" in m and "configMap" in vol:
                if m["subPath"] not in cms.get(vol["configMap"]["name"], {}).get("data", {}):
                    out.append(f"{where}: ConfigMap {vol['configMap']['name']} has no key {m['subPath']}")
    return out


def _port_names(deps: list[dict]) -> set[str]:
    return {cp["name"] for d in deps for c in containers(d) for cp in c.get("ports", [])}


def _selector_problems(objs: list[dict]) -> list[str]:
    """Services, PodDisruptionBudgets and PodMonitors select pods, and the ports they name exist."""
    out = []
    deps = list(by_kind(objs, "Deployment").values())
    for kind in ("Service", "PodDisruptionBudget", "PodMonitor"):
        for name, o in by_kind(objs, kind).items():
            sel = o["spec"]["selector"]
            chosen = [d for d in deps if _selects(sel, d["spec"]["template"]["metadata"]["labels"])]
            if not chosen:
                out.append(f"{kind}/{name}: its selector selects no Deployment's pods")
            wanted = [p["targetPort"] for p in o["spec"].get("ports", [])]
            wanted += [ep["port"] for ep in o["spec"].get("podMetricsEndpoints", [])]
            out += [f"{kind}/{name}: no container port named {p}" for p in wanted if p not in _port_names(chosen)]
    return out


def _selects(sel: dict, labels: dict) -> bool:
    for e in sel.get("matchExpressions", []):
        if e["operator"] != "In" or labels.get(e["key"]) not in e["values"]:
            return False
    plain = {k: v for k, v in sel.items() if k not in ("matchExpressions", "matchLabels")}
    plain.update(sel.get("matchLabels", {}))
    return all(labels.get(k) == v for k, v in plain.items())


def _queue_of(d: dict) -> str | None:
    cmd = pod_spec(d)["containers"][0]["command"]
    return cmd[cmd.index("-Q") + 1] if "-Q" in cmd else None


# KEDA's Redis scalers' defaults for what the manifests may leave out
KEDA_REDIS_DEFAULTS = {"databaseIndex": "0", "enableTLS": "false"}


def _redis_of(objs: list[dict]) -> tuple[dict, set[int]]:
    """The trigger type and metadata KEDA needs to read the Redis that quickmig.toml's
    redis_url names, and the ports a pod reaches it on (a sentinel's, then the master's)."""
    url = config_mod.tomllib.loads(by_kind(objs, "ConfigMap")["quickmig-config"]["data"]["quickmig.toml"])["redis_url"]
    if redis_endpoint.is_sentinel(url):
        t = redis_endpoint.parse_sentinel(url)
        return ({"type": "redis-sentinel", "addresses": ",".join(f"{h}:{p}" for h, p in t.sentinels),
                 "sentinelMaster": t.service, "databaseIndex": str(t.db), "enableTLS": str(t.tls).lower()},
                {p for _, p in t.sentinels} | {6379})  # the master's port the sentinels name: the default
    parts = urlsplit(url)
    return ({"type": "redis", "address": parts.netloc.rpartition("@")[2], "databaseIndex": parts.path.strip("/") or "0",
             "enableTLS": str(parts.scheme == "rediss").lower()}, {parts.port or 6379})


def _scaling_problems(objs: list[dict], deps: dict[str, dict]) -> list[str]:
    out = []
    want, ports = _redis_of(objs)
    scaled = by_kind(objs, "ScaledObject")
    for name, so in scaled.items():
        target = deps.get(so["spec"]["scaleTargetRef"]["name"])
        if target is None:
            out.append(f"ScaledObject/{name}: no Deployment {so['spec']['scaleTargetRef']['name']}")
            continue
        for t in so["spec"]["triggers"]:
            md = t["metadata"]
            if md.get("listName") != _queue_of(target):
                out.append(f"ScaledObject/{name}: watches {md.get('listName')!r}, the pool consumes "
                           f"{_queue_of(target)!r}")
            if md.get("listName") not in routing.QUEUES:
                out.append(f"ScaledObject/{name}: {md.get('listName')!r} is not one of quickmig's queues")
            if t["type"] != want["type"]:
                out.append(f"ScaledObject/{name}: a {t['type']} trigger, redis_url needs {want['type']}")
            for k, v in want.items():
                if k != "type" and md.get(k, KEDA_REDIS_DEFAULTS.get(k)) != v:
                    out.append(f"ScaledObject/{name}: {k} {md.get(k)!r} is not redis_url's {v!r}")
    if sorted(_queue_of(deps[n]) for n in scaled if n in deps) != sorted(routing.QUEUES):
        out.append(f"ScaledObjects scale {sorted(scaled)}, not one per pool {sorted(routing.QUEUES)}")
    egress = {p["port"] for rule in by_kind(objs, "NetworkPolicy")["quickmig-egress"]["spec"]["egress"]
              for p in rule.get("ports", [])}
    out += [f"NetworkPolicy/quickmig-egress: Redis port {p} (redis_url) not admitted" for p in sorted(ports - egress)]
    return out


def drain_problems(objs: list[dict]) -> list[str]:
    """What lets an update or a scale-down cut a switchover short, or leave a pool empty."""
    out = []
    deps = by_kind(objs, "Deployment")
    if sorted(q for q in map(_queue_of, deps.values()) if q) != sorted(routing.QUEUES):
        out.append("not exactly one Deployment per pool")
    cut = deps["quickmig-worker-cutover"]
    # the switchover's host operations, each with its deadline in the driver
    longest = (driver.OP_TIMEOUT_S["save_vm"] + driver.OP_TIMEOUT_S["import_vm"] + driver.OP_TIMEOUT_S["start_vm"]
               + cutover.HEARTBEAT_TIMEOUT_S + driver.HEARTBEAT_MARGIN_S + 120)  # describe_vm: the default
    if pod_spec(cut)["terminationGracePeriodSeconds"] <= longest:
        out.append(f"cutover terminationGracePeriodSeconds {pod_spec(cut)['terminationGracePeriodSeconds']} is not "
                   f"above the switchover's deadlines ({longest} s)")
    if any("livenessProbe" in c for c in pod_spec(cut)["containers"]):
        out.append("the cutover worker has a liveness probe: a slow answer would kill it in a downtime")
    for name in POOLS:
        ru = deps[name]["spec"]["strategy"].get("rollingUpdate", {})
        if deps[name]["spec"]["strategy"]["type"] != "RollingUpdate" or ru.get("maxUnavailable") != 0:
            out.append(f"{name}: an update may take the pool's last worker (maxUnavailable must be 0)")
    for so in by_kind(objs, "ScaledObject").values():
        if so["spec"].get("minReplicaCount", 0) < 1:
            out.append(f"ScaledObject/{so['metadata']['name']}: scales its pool to zero")
    beat = deps["quickmig-beat"]
    if beat["spec"]["replicas"] != 1 or beat["spec"]["strategy"]["type"] != "Recreate":
        out.append("beat: not exactly one (replicas 1, strategy Recreate)")
    fleet = deps["quickmig-fleet-exporter"]
    if fleet["spec"]["replicas"] != 1 or fleet["spec"]["strategy"].get("rollingUpdate", {}).get("maxSurge") != 0:
        out.append("fleet exporter: not exactly one")
    return out


def port_problems(objs: list[dict]) -> list[str]:
    """Container ports are the ones the code and the systemd install use, and NetworkPolicy admits them."""
    want = {"http": config_mod.API_PORT_DEFAULT, "metrics-node": 9464, "metrics-fleet": 9465}
    systemd = (ROOT / "deploy" / "systemd")
    if "--port 9464" not in (systemd / "quickmig-metrics.service").read_text() or \
            "--port 9465" not in (systemd / "quickmig-fleet-metrics.service").read_text():
        return ["the systemd units' exporter ports changed: update this test and the manifests"]
    out = []
    admitted = {p["port"] for np in by_kind(objs, "NetworkPolicy").values() for rule in np["spec"].get("ingress", [])
                for p in rule.get("ports", [])}
    for d in by_kind(objs, "Deployment").values():
        for c in containers(d):
            for p in c.get("ports", []):
                if want.get(p["name"]) != p["containerPort"]:
                    out.append(f"{d['metadata']['name']}/{c['name']}: port {p['name']} is {p['containerPort']}, "
                               f"quickmig's is {want.get(p['name'])}")
                if str(p["containerPort"]) not in " ".join(c["command"]):
                    out.append(f"{d['metadata']['name']}/{c['name']}: listens elsewhere than {p['containerPort']}")
                if p["containerPort"] not in admitted:
                    out.append(f"{d['metadata']['name']}/{c['name']}: no NetworkPolicy admits {p['containerPort']}")
    return out


def all_problems(objs: list[dict]) -> list[str]:
    return schema_problems(objs) + reference_problems(objs) + drain_problems(objs) + port_problems(objs)


# -- the tests

def test_every_object_passes_its_schema(rendered):
    name, objs = rendered
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "NetworkPolicy", "ScaledObject", "TriggerAuthentication", "PodMonitor",
            "Secret", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    assert schema_problems(objs) == []


def test_objects_reference_what_exists_and_keda_watches_the_pools_queues(rendered):
    assert reference_problems(rendered[1]) == []


def test_updates_and_scale_downs_let_a_switchover_finish(rendered):
    assert drain_problems(rendered[1]) == []


def test_ports_are_quickmig_s_and_admitted(rendered):
    assert port_problems(rendered[1]) == []


def test_the_overlay_s_config_and_secrets_load_as_a_worker_reads_them(rendered, tmp_path):
    """quickmig's own loader accepts the rendered quickmig.toml with the rendered Secret's
    files, mounted as the pods see them (owner-only, after the init container's copy)."""
    _, objs = rendered
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for key, b64 in by_kind(objs, "Secret")["quickmig-credentials"]["data"].items():
        (secrets / key).write_bytes(base64.b64decode(b64))
        (secrets / key).chmod(0o400)
    toml = by_kind(objs, "ConfigMap")["quickmig-config"]["data"]["quickmig.toml"]
    init = pod_spec(by_kind(objs, "Deployment")["quickmig-worker-copy"])["initContainers"][0]
    assert "/run/quickmig/secrets/" in " ".join(init["command"]) and "/run/quickmig/secrets/" in toml
    (tmp_path / "quickmig.toml").write_text(toml.replace("/run/quickmig/secrets/", f"{secrets}/"))
    cfg = config_mod.load_config(tmp_path / "quickmig.toml")
    cfg.check_credentials()
    assert cfg.redis_credentials() == ("quickmig", "r")
    # KEDA logs in as quickmig does: the Secret keys its TriggerAuthentication names hold
    # the user and password credentials.toml gives quickmig, to Redis and to the sentinels
    secret = {k: (secrets / k).read_text() for k in by_kind(objs, "Secret")["quickmig-credentials"]["data"]}
    keda = {r["parameter"]: secret[r["key"]]
            for r in by_kind(objs, "TriggerAuthentication")["quickmig-redis"]["spec"]["secretTargetRef"]}
    assert (keda.get("username"), keda.get("password")) == cfg.redis_credentials()
    assert (keda.get("sentinelUsername"), keda.get("sentinelPassword")) == cfg.redis_target()[1]


def breaker(objs: list[dict]):
    """The objects pass every check; breaker(objs)(change) is what the checks find in a copy of
    them after `change`."""
    assert all_problems(objs) == []

    def broken(change) -> list[str]:
        bad = copy.deepcopy(objs)
        change(bad)
        return all_problems(bad)
    return broken


def test_a_broken_manifest_is_caught(tmp_path):
    broken = breaker(render(overlay_tree(tmp_path, "production")))

    deps = lambda o: by_kind(o, "Deployment")  # noqa: E731
    assert any("replicas" in p for p in broken(lambda o: deps(o)["quickmig-api"]["spec"].update(replicas="two")))
    assert any("'imagePull' was unexpected" in p
               for p in broken(lambda o: pod_spec(deps(o)["quickmig-api"])["containers"][0].update(imagePull="x")))
    so = lambda o: by_kind(o, "ScaledObject")["quickmig-worker-copy"]  # noqa: E731
    assert any("listLength" in p or "not of type 'string'" in p
               for p in broken(lambda o: so(o)["spec"]["triggers"][0]["metadata"].update(listLength=2)))
    assert any("'cutover'" in p for p in broken(lambda o: so(o)["spec"]["triggers"][0]["metadata"].update(
        listName="cutover")))
    assert any("databaseIndex '1' is not redis_url's '0'" in p for p in broken(
        lambda o: so(o)["spec"]["triggers"][0]["metadata"].update(databaseIndex="1")))
    assert any("enableTLS" in p for p in broken(lambda o: so(o)["spec"]["triggers"][0]["metadata"].pop("enableTLS")))
    assert any("no Secret" in p for p in broken(
        lambda o: pod_spec(deps(o)["quickmig-beat"])["volumes"][1]["secret"].update(secretName="nope")))
    assert any("selector" in p for p in broken(
        lambda o: deps(o)["quickmig-worker-copy"]["spec"]["template"]["metadata"]["labels"].update(
            {"app.kubernetes.io/component": "worker-kopy"})))
    assert any("grace" in p.lower() for p in broken(
        lambda o: pod_spec(deps(o)["quickmig-worker-cutover"]).update(terminationGracePeriodSeconds=300)))
    assert any("maxUnavailable" in p for p in broken(
        lambda o: deps(o)["quickmig-worker-cutover"]["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1)))
    assert any("Recreate" in p for p in broken(
        lambda o: deps(o)["quickmig-beat"]["spec"].update(strategy={"type": "RollingUpdate"})))
    assert any("no container port named metrics" in p for p in broken(
        lambda o: by_kind(o, "PodMonitor")["quickmig-node"]["spec"]["podMetricsEndpoints"][0].update(port="metrics")))
    assert any("8780" in p for p in broken(
        lambda o: pod_spec(deps(o)["quickmig-api"])["containers"][0]["ports"][0].update(containerPort=8080)))


def test_a_sentinel_overlay_that_disagrees_with_redis_url_is_caught(tmp_path):
    broken = breaker(render(overlay_tree(tmp_path, "sentinel")))

    md = lambda o: by_kind(o, "ScaledObject")["quickmig-worker-cutover"]["spec"]["triggers"][0]  # noqa: E731
    assert any("a redis trigger, redis_url needs redis-sentinel" in p for p in broken(lambda o: md(o).update(
        type="redis")))
    assert any("sentinelMaster 'mymaster'" in p for p in broken(lambda o: md(o)["metadata"].update(
        sentinelMaster="mymaster")))
    assert any("addresses" in p for p in broken(lambda o: md(o)["metadata"].update(
        addresses="sentinel-1.example:26379")))
    egress = lambda o: by_kind(o, "NetworkPolicy")["quickmig-egress"]["spec"]["egress"][1]["ports"]  # noqa: E731
    assert any("port 26379" in p for p in broken(lambda o: egress(o).pop(1)))


def test_the_renderer_merges_and_replaces_generated_objects_as_kustomize_does(tmp_path):
    overlay = overlay_tree(tmp_path, "sentinel")
    objs = render(overlay)
    cm = by_kind(objs, "ConfigMap")["quickmig-config"]["data"]
    assert list(cm) == ["quickmig.toml"] and "rediss+sentinel://" in cm["quickmig.toml"]
    data = by_kind(objs, "Secret")["quickmig-credentials"]["data"]
    assert {"winrm-password", "redis-ca.pem", "redis-sentinel-password"} <= set(data)  # production's and its own
    assert b"sentinel_password_file" in base64.b64decode(data["credentials.toml"])  # its own over production's
    assert len([o for o in objs if o["kind"] == "Secret"]) == 1
    k = overlay / "kustomization.yaml"
    text = k.read_text()
    k.write_text(text.replace("    behavior: merge\n", ""))
    with pytest.raises(KustomizeError, match="already exists"):
        render(overlay)
    k.write_text(text.replace("    namespace: quickmig\n    behavior: merge", "    behavior: merge"))
    with pytest.raises(KustomizeError, match="namespace: quickmig"):
        render(overlay)


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path):
    overlay = overlay_tree(tmp_path, "lab")
    k = overlay / "kustomization.yaml"
    k.write_text(k.read_text() + "replicas:\n  - {name: quickmig-api, count: 2}\n")
    with pytest.raises(KustomizeError, match="replicas"):
        render(overlay)
    k.write_text(k.read_text().replace("replicas:\n  - {name: quickmig-api, count: 2}\n", ""))
    two = overlay / "patches" / "api-resources.yaml"
    two.write_text(two.read_text() + "---\n" + (overlay / "patches" / "worker-copy-resources.yaml").read_text())
    with pytest.raises(KustomizeError, match="kustomize takes one"):
        render(overlay)
    (overlay / "patches" / "worker-copy-resources.yaml").write_text(two.read_text().split("---\n")[1])
    two.write_text(two.read_text().split("---\n")[0])
    render(overlay)
    (overlay / "secrets" / "smb-password").unlink()
    k.write_text(k.read_text().replace("replicas:\n  - {name: quickmig-api, count: 2}\n", ""))
    with pytest.raises(KustomizeError, match="smb-password"):
        render(overlay)


def test_the_manifests_use_no_yaml_anchors():
    """Plain YAML only: what this renderer (PyYAML) expands, kustomize's YAML library may
    keep as an alias or refuse, so the two could disagree about the same file."""
    import yaml
    for f in K8S.glob("**/*.yaml"):
        aliases = [e for e in yaml.parse(f.read_text()) if isinstance(e, yaml.AliasEvent)
                   or getattr(e, "anchor", None)]
        assert aliases == [], f
