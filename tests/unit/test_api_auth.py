"""API tokens (producer/api/auth.py): the credentials file's tables, `quickmig api token`."""
from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from producer.api import auth
from workers.model.config import ConfigError


def test_quickmig_api_token_prints_a_token_and_the_table_that_admits_it():
    res = subprocess.run([sys.executable, "-m", "producer.cli", "api", "token", "ci-bot", "--scopes", "read,migrate"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    token = next(line.split(": ", 1)[1] for line in res.stdout.splitlines() if line.startswith("# token: "))
    callers = auth.parse(tomllib.loads(res.stdout), "credentials.toml")
    assert token not in res.stdout.split("# token: ")[1].split("\n", 1)[1]  # only its digest in the table
    assert callers == {auth.digest(token): auth.Caller("ci-bot", "migrate")}
    bad = subprocess.run([sys.executable, "-m", "producer.cli", "api", "token", "x", "--scopes", "root"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "read, migrate, admin" in bad.stderr


def test_scopes_rank_read_migrate_admin():
    assert auth.Caller("a", "admin").may("read") and auth.Caller("a", "admin").may("admin")
    assert auth.Caller("m", "migrate").may("read") and not auth.Caller("m", "migrate").may("admin")
    assert not auth.Caller("r", "read").may("migrate")


@pytest.mark.parametrize("table, says", [
    ({"x": {"sha256": "ab", "scopes": ["read"]}}, "64 hex digits"),
    ({"x": {"sha256": "a" * 64, "scopes": ["root"]}}, "scopes must be a list of read, migrate, admin"),
    ({"x": {"sha256": "a" * 64, "scopes": []}}, "scopes must be a list"),
    ({"x": {"sha256": "a" * 64, "scopes": ["read"], "password": "p"}}, "takes sha256, scopes and rate_per_minute"),
    ({"x": {"sha256": "a" * 64, "scopes": ["read"], "rate_per_minute": 0}}, "at least 1"),
    ({"x": {"sha256": "a" * 64, "scopes": ["read"]}, "y": {"sha256": "A" * 64, "scopes": ["read"]}}, "same token"),
])
def test_a_bad_token_table_is_refused_naming_it(table, says):
    with pytest.raises(ConfigError, match=says):
        auth.parse({"api_tokens": table}, "credentials.toml")


def test_the_tokens_are_read_again_when_the_file_changes_and_a_broken_file_keeps_the_last_good(tmp_path):
    f = tmp_path / "credentials.toml"
    one, two = auth.new_token(), auth.new_token()
    f.write_text(auth.token_entry("one", one, ["read"]))
    tokens = auth.Tokens(f)
    assert tokens.caller(one).name == "one" and tokens.caller(two) is None
    f.write_text(auth.token_entry("one", one, ["read"]) + auth.token_entry("two", two, ["admin"]))
    assert tokens.caller(two) == auth.Caller("two", "admin")
    f.write_text("[api_tokens.two\n")  # half written
    assert tokens.caller(two) == auth.Caller("two", "admin")
    f.write_text(auth.token_entry("two", two, ["admin"]))  # one revoked
    assert tokens.caller(one) is None
