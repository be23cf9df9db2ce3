"""Generated bad configurations: each one, loaded by `quickmig config check`, must end in
exit 2 and one line naming the file and the key to fix, never a traceback.

A seeded generator starts from a valid quickmig.toml and credentials file, adds valid
optional settings at random (so no two files are alike), then breaks exactly one thing:
a value of the wrong type or out of range, a required key removed, an unknown key, a
table replaced by a scalar, a credentials file open to others, or broken TOML.
"""
from __future__ import annotations

import math
import random

import pytest

from producer import cli
from workers.model.config import RECONCILER_DEADLINES_S

SEED = 18
CASES = 240

HOST_BAD = {
    "winrm_endpoint": [5, "", "ftp://hv1/wsman", "hv1:5985", "http://", "https://hv1:abc/wsman", True, [1]],
    "winrm_transport": ["kerberoz", 5, "", "NTLM", False, "credssp"],
    "winrm_cert_validation": ["none", 5, "", True, "ignore"],
    "winrm_credssp_delegates_credentials": ["yes", 1, []],
    "vm_root": [5, "", "VMs", "D:", "D:\\", "\\\\srv\\share", [], {"a": 1}],
    "smb_server": [5, "", [], {"x": "y"}],
    "smb_port": [0, -1, 65536, "abc", 1.5, True, "445"],
    "smb_share": [5, "", False],
    "smb_encrypt": ["yes", 1, 0, "true", []],
    "max_copies": [0, -1, "2", 2.5, False],
    "max_migrations": [0, -3, "x", 1.0],
}
TOP_BAD = {
    "redis_url": [5, True, "", "http://127.0.0.1:6379/0", "ftp://x", [], {"a": 1}, 1.5],
    "hosts": [5, "hv1", [], True],
    "credentials_file": [5, True, "", ["a"]],
    "copy": [5, "x", [1]],
    "logging": [5, True],
    "metrics": ["9100", 3],
    "reconciler": [[1], 0],
    "lab": [1.5],
}
SECTION_BAD = {
    ("copy", "streams"): [0, 17, "4", -1, 2.0, True],
    ("logging", "format"): ["xml", 5, ""],
    ("metrics", "port"): [0, 70000, "x", -80, 1.5],
    ("metrics", "addr"): [5, "", []],
    ("reconciler", "max_nudges"): [-1, "3", 1.5, True],
    ("lab", "dir"): [5, "", False],
}
CRED_BAD = {
    "winrm_username": [5, "", True],
    "winrm_password": [5, "", [], {"a": "b"}],
    "smb_username": [0, ""],
    "smb_password": [1.5, "", False],
}
REQUIRED_HOST = ["winrm_endpoint", "vm_root", "smb_server", "smb_share"]
REQUIRED_CRED = list(CRED_BAD)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return "nan" if math.isnan(v) else "inf" if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"


def toml_doc(doc: dict) -> str:
    lines, tables = [], []
    for k, v in doc.items():
        (tables if isinstance(v, dict) and k != "deadlines_s" else lines).append((k, v))
    out = [f"{k} = {toml_value(v)}" for k, v in lines]
    for k, v in tables:
        if k == "hosts":
            for name, h in v.items():
                out += ["", f'[hosts."{name}"]'] + [f"{hk} = {toml_value(hv)}" for hk, hv in h.items()]
        else:
            out += ["", f"[{k}]"] + [f"{sk} = {toml_value(sv)}" for sk, sv in v.items()]
    return "\n".join(out) + "\n"


def valid(rng: random.Random) -> tuple[dict, dict]:
    hosts = {}
    for i in range(rng.randint(1, 3)):
        h = {"winrm_endpoint": f"https://hv{i}.example:5986/wsman", "vm_root": f"D:\\VMs\\hv{i}",
             "smb_server": f"hv{i}.example", "smb_share": "VMs"}
        for key, value in (("winrm_transport", rng.choice(["ntlm", "kerberos"])), ("smb_port", rng.randint(1, 65535)),
                           ("smb_encrypt", rng.choice([True, False])), ("max_copies", rng.randint(1, 8)),
                           ("max_migrations", rng.randint(1, 8)), ("winrm_cert_validation", "validate")):
            if rng.random() < 0.5:
                h[key] = value
        hosts[f"hv{i}"] = h
    doc: dict = {"redis_url": rng.choice(["redis://127.0.0.1:6379/0", "rediss://redis.example:6380/1",
                                          "unix:///run/redis.sock"]),
                 "credentials_file": "credentials.toml", "hosts": hosts}
    if rng.random() < 0.5:
        doc["copy"] = {"streams": rng.randint(1, 16)}
    if rng.random() < 0.5:
        doc["metrics"] = {"port": rng.randint(1, 65535), "addr": "127.0.0.1"}
    if rng.random() < 0.5:
        doc["reconciler"] = {"max_nudges": rng.randint(0, 5),
                             "deadlines_s": {rng.choice(list(RECONCILER_DEADLINES_S)): rng.uniform(1, 600)}}
    creds = {"default": {k: f"{k}-{rng.randrange(10**6)}" for k in CRED_BAD}}
    return doc, creds


def break_one(rng: random.Random, doc: dict, creds: dict) -> tuple[str, str, int]:
    """Break one thing; (the key the error must name, which file, the credentials file's mode)."""
    host = rng.choice(list(doc["hosts"]))
    kind = rng.choice(["host", "host", "host", "top", "section", "deadline", "missing", "unknown", "cred",
                       "cred_missing", "cred_shape", "mode", "syntax"])
    if kind == "host":
        key = rng.choice(list(HOST_BAD))
        doc["hosts"][host][key] = rng.choice(HOST_BAD[key])
        return key, "config", 0o600
    if kind == "top":
        key = rng.choice(list(TOP_BAD))
        doc[key] = rng.choice(TOP_BAD[key])
        return key, "config", 0o600
    if kind == "section":
        (section, key) = rng.choice(list(SECTION_BAD))
        doc.setdefault(section, {})[key] = rng.choice(SECTION_BAD[(section, key)])
        return key, "config", 0o600
    if kind == "deadline":
        state = rng.choice(list(RECONCILER_DEADLINES_S) + ["copy", "done"])
        value = rng.choice([0, -1.5, "60", math.nan, math.inf, True]) if state in RECONCILER_DEADLINES_S else 60
        doc.setdefault("reconciler", {})["deadlines_s"] = {state: value}
        return state, "config", 0o600
    if kind == "missing":
        key = rng.choice(REQUIRED_HOST + ["redis_url"])
        (doc if key == "redis_url" else doc["hosts"][host]).pop(key)
        return key, "config", 0o600
    if kind == "unknown":
        key = rng.choice(["redis_urll", "smb_encryption", "streams", "max_copy"])
        table = {"redis_urll": doc, "smb_encryption": doc["hosts"][host], "max_copy": doc["hosts"][host],
                 "streams": doc.setdefault("metrics", {})}[key]
        table[key] = 1
        return key, "config", 0o600
    if kind == "cred":
        key = rng.choice(list(CRED_BAD))
        if rng.random() < 0.5:
            creds["default"][key] = rng.choice(CRED_BAD[key])
        else:
            creds.setdefault("hosts", {})[host] = {key: rng.choice(CRED_BAD[key])}
        return key, "credentials", 0o600
    if kind == "cred_missing":
        key = rng.choice(REQUIRED_CRED)
        creds["default"].pop(key)
        return key, "credentials", 0o600
    if kind == "cred_shape":
        key, value = rng.choice([("default", 5), ("hosts", "x"), ("hosts", [1]), ("passwords", {"a": "b"})])
        creds[key] = value
        return key, "credentials", 0o600
    if kind == "mode":
        return "chmod 600", "credentials", rng.choice([0o644, 0o640, 0o604, 0o660, 0o602])
    return "line", "config", 0o600  # syntax: the writer breaks the text


@pytest.fixture(scope="module")
def cases() -> list[tuple[int, dict, dict, str, str, int, bool]]:
    rng = random.Random(SEED)
    out = []
    for i in range(CASES):
        doc, creds = valid(rng)
        key, where, mode = break_one(rng, doc, creds)
        out.append((i, doc, creds, key, where, mode, key == "line"))
    return out


def test_the_generator_makes_valid_files_that_pass(tmp_path, capsys):
    rng = random.Random(SEED + 1)
    for i in range(20):
        doc, creds = valid(rng)
        d = tmp_path / str(i)
        d.mkdir()
        (d / "quickmig.toml").write_text(toml_doc(doc))
        (d / "credentials.toml").write_text(toml_doc(creds))
        (d / "credentials.toml").chmod(0o600)
        assert cli.main(["config", "check", "--config", str(d / "quickmig.toml")]) == 0, capsys.readouterr()
        assert capsys.readouterr().out == "ok\n"


def test_every_generated_bad_config_is_one_line_naming_file_and_key_and_exit_2(tmp_path, capsys, cases):
    kinds = set()
    for i, doc, creds, key, where, mode, syntax in cases:
        d = tmp_path / str(i)
        d.mkdir()
        text = toml_doc(doc)
        if syntax:
            lines = text.splitlines()
            at = random.Random(i).randrange(len(lines))
            lines[at] = lines[at] + " = = ["
            text = "\n".join(lines)
        cfg, cred = d / "quickmig.toml", d / "credentials.toml"
        cfg.write_text(text)
        cred.write_text(toml_doc(creds))
        cred.chmod(mode)
        try:
            rc = cli.main(["config", "check", "--config", str(cfg)])
        except BaseException as e:  # noqa: BLE001 - the point: nothing may escape
            pytest.fail(f"case {i} ({key}): {type(e).__name__}: {e}\n{text}")
        out, err = capsys.readouterr()
        named = str((cfg if where == "config" else cred).resolve())
        assert rc == 2 and out == "", (i, key, text, out, err)
        assert err.count("\n") == 1 and err.startswith("quickmig: "), (i, err)
        assert named in err and key in err, (i, key, err, text)
        assert "Traceback" not in err
        kinds.add((where, key))
    assert len(cases) >= 200 and len(kinds) >= 40  # the generator really varies what it breaks


@pytest.mark.parametrize("args", [["--config", "{dir}"], ["--config", "{dir}/missing.toml"]])
def test_a_config_path_that_is_no_file_is_one_line(tmp_path, capsys, args):
    rc = cli.main(["config", "check"] + [a.format(dir=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(tmp_path) in err
