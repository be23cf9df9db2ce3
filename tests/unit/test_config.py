"""quickmig.toml is checked whole when it loads: every section typed, a bad value refused
with one line naming the key, before anything runs."""
from pathlib import Path

import pytest

from workers.model import routing, states
from workers.model.config import (
    RECONCILER_DEADLINES_S,
    RECONCILER_MAX_NUDGES,
    ConfigError,
    load_config,
)

HOST = """
[hosts.hv1]
winrm_endpoint = "https://hv1.example:5986/wsman"
vm_root = 'D:\\VMs'
smb_server = "hv1.example"
smb_share = "VMs"
"""


def config(tmp_path, text: str):
    path = tmp_path / "quickmig.toml"
    path.write_text('redis_url = "redis://127.0.0.1:6379/0"\n' + text)
    return load_config(path)


def test_every_active_state_has_a_deadline_and_a_step_to_resend():
    assert set(RECONCILER_DEADLINES_S) == set(states.ACTIVE) == set(routing.STEP_OF)


def test_defaults_apply_without_a_reconciler_table(tmp_path):
    cfg = config(tmp_path, HOST)
    assert (cfg.reconciler.deadlines_s, cfg.reconciler.max_nudges) == (RECONCILER_DEADLINES_S, RECONCILER_MAX_NUDGES)


def test_a_reconciler_table_overrides_some_deadlines_and_the_nudges(tmp_path):
    cfg = config(tmp_path, "[reconciler]\nmax_nudges = 5\ndeadlines_s = { copying = 7 }\n")
    assert cfg.reconciler.max_nudges == 5 and cfg.reconciler.deadlines_s["copying"] == 7.0
    assert cfg.reconciler.deadlines_s["queued"] == RECONCILER_DEADLINES_S["queued"]


def test_an_unknown_state_in_the_deadlines_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown state 'copy'"):
        config(tmp_path, "[reconciler]\ndeadlines_s = { copy = 7 }\n")


@pytest.mark.parametrize("text, says", [
    ("[copy]\nstreams = 0\n", r"\[copy\]: streams must be a whole number from 1 to 16, not 0"),
    ("[copy]\nstreams = \"4\"\n", r"\[copy\]: streams must be a whole number from 1 to 16, not '4'"),
    ("[logging]\nformat = \"xml\"\n", r"\[logging\]: format must be one of text, json, not 'xml'"),
    ("[metrics]\nport = \"x\"\n", r"\[metrics\]: port must be a whole number"),
    ("[reconciler]\nmax_nudges = -1\n", r"max_nudges must be a whole number of at least 0"),
    ("[copy]\nstream = 4\n", r"\[copy\]: unknown key 'stream' \(known here: streams\)"),
    (HOST + "max_copies = 0\n", r"\[hosts.hv1\]: max_copies must be a whole number of at least 1, not 0"),
    (HOST + "smb_port = \"abc\"\n", r"\[hosts.hv1\]: smb_port must be a whole number from 1 to 65535, not 'abc'"),
    ("copy = 5\n", r"\[copy\] must be a table"),
])
def test_a_bad_setting_is_refused_when_the_config_loads_naming_the_key(tmp_path, text, says):
    with pytest.raises(ConfigError, match=says):
        config(tmp_path, text)


def test_typed_sections_carry_their_values(tmp_path):
    cfg = config(tmp_path, '[copy]\nstreams = 2\n[logging]\nformat = "json"\n'
                           '[metrics]\nport = 9200\naddr = "0.0.0.0"\n')
    assert cfg.copy.streams == 2 and cfg.logging.format == "json"
    assert (cfg.metrics.port, cfg.metrics.addr) == (9200, "0.0.0.0")


def test_a_redis_url_that_is_not_redis_is_refused(tmp_path):
    path = tmp_path / "quickmig.toml"
    path.write_text('redis_url = "http://127.0.0.1:6379/0"\n')
    with pytest.raises(ConfigError, match=r"redis_url must be a redis://, rediss://, unix://, "
                                          r"redis\+sentinel:// or rediss\+sentinel:// URL"):
        load_config(path)


# -- WinRM transports ------------------------------------------------------------------------

def host_with(extra: str, endpoint: str = "https://hv1.example:5986/wsman") -> str:
    return HOST.replace("https://hv1.example:5986/wsman", endpoint) + extra


def test_certificate_validation_ignore_is_refused_beyond_loopback(tmp_path):
    with pytest.raises(ConfigError, match=r"\[hosts.hv1\]: winrm_cert_validation 'ignore' accepts any certificate"):
        config(tmp_path, host_with('winrm_cert_validation = "ignore"\n'))
    cfg = config(tmp_path, host_with('winrm_cert_validation = "ignore"\n', "https://127.0.0.1:5986/wsman"))
    assert cfg.hosts["hv1"].winrm_cert_validation == "ignore"


def test_credssp_needs_its_acknowledgement_and_is_then_warned_about(tmp_path, capsys):
    with pytest.raises(ConfigError, match="winrm_credssp_delegates_credentials = true"):
        config(tmp_path, host_with('winrm_transport = "credssp"\n'))
    cfg = config(tmp_path, host_with('winrm_transport = "credssp"\nwinrm_credssp_delegates_credentials = true\n'))
    assert [w for w in cfg.warnings() if "host hv1" in w and "delegates" in w]
    assert config(tmp_path, HOST).warnings() == []


def test_a_transport_whose_module_is_missing_is_refused_at_load(tmp_path, monkeypatch):
    import importlib.util

    from workers.model import config as config_mod
    real = importlib.util.find_spec
    monkeypatch.setattr(config_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "kerberos" else real(name, *a))
    with pytest.raises(ConfigError, match=r"winrm_transport 'kerberos' needs .*pip install 'quickmig\[kerberos\]'"):
        config(tmp_path, host_with('winrm_transport = "kerberos"\n'))


def test_the_declared_extras_make_kerberos_and_credssp_usable():
    import winrm.transport
    assert winrm.transport.HAVE_KERBEROS and winrm.transport.HAVE_CREDSSP  # dev.sh installs both extras


# -- secrets ---------------------------------------------------------------------------------

CREDS = '[default]\nwinrm_username = "EX\\\\svc"\nsmb_username = "EX\\\\svc"\n'


def with_creds(tmp_path, text: str, mode: int = 0o600):
    cred = tmp_path / "credentials.toml"
    cred.write_text(CREDS + text)
    cred.chmod(mode)
    path = tmp_path / "quickmig.toml"
    path.write_text('redis_url = "redis://127.0.0.1:6379/0"\ncredentials_file = "credentials.toml"\n' + HOST)
    return load_config(path)


def secret_file(tmp_path, name: str, value: str, mode: int = 0o600):
    f = tmp_path / name
    f.write_text(value)
    f.chmod(mode)
    return f


def test_each_secret_comes_from_the_file_its_own_file_or_an_environment_variable(tmp_path, monkeypatch):
    secret_file(tmp_path, "smb.secret", "smb-from-file\n")  # systemd's LoadCredential keeps a newline
    monkeypatch.setenv("QM_WINRM", "winrm-from-env")
    cfg = with_creds(tmp_path, 'winrm_password_env = "QM_WINRM"\nsmb_password_file = "smb.secret"\n'
                               '[hosts.hv1]\nsmb_password = "smb-inline-for-hv1"\n')
    c = cfg.credentials("hv1")
    assert (c.winrm_password, c.smb_password) == ("winrm-from-env", "smb-inline-for-hv1")
    assert "winrm-from-env" not in repr(c) and "smb-inline" not in repr(c)


@pytest.mark.parametrize("text, says", [
    ('winrm_password = "a"\nwinrm_password_env = "X"\nsmb_password = "b"\n',
     r"\[default\]: give one of winrm_password, winrm_password_file, winrm_password_env"),
    ('smb_password = "b"\n',
     r"\[default\]: winrm_password is required \(or winrm_password_file, or winrm_password_env\)"),
    ('winrm_password_env = "QM_NOT_SET_ANYWHERE"\nsmb_password = "b"\n',
     r"winrm_password_env: the environment variable QM_NOT_SET_ANYWHERE is empty or not set"),
    ('winrm_password_file = "missing.secret"\nsmb_password = "b"\n', r"winrm_password_file .*missing.secret"),
    ('winrm_password_file = "open.secret"\nsmb_password = "b"\n',
     r"open.secret is open to group or others \(mode 0644\); run: chmod 600 .*open.secret"),
    ('winrm_password = "a"\nsmb_password = "b"\n[redis]\npassword_file = "open.secret"\n', r"chmod 600"),
    ('winrm_password = "a"\nsmb_password = "b"\n[redis]\nuser = "x"\n', r"\[redis\]: unknown key 'user'"),
])
def test_a_secret_source_that_cannot_be_used_is_one_line_naming_it(tmp_path, text, says):
    secret_file(tmp_path, "open.secret", "x", 0o644)
    cfg = with_creds(tmp_path, text)
    with pytest.raises(ConfigError, match=says):
        cfg.check_credentials()


def test_the_redis_user_and_password_go_into_the_url_quoted_and_only_there(tmp_path):
    secret_file(tmp_path, "redis.secret", "p@ss:w/rd?#\n")
    cfg = with_creds(tmp_path, 'winrm_password = "a"\nsmb_password = "b"\n'
                               '[redis]\nusername = "quickmig"\npassword_file = "redis.secret"\n')
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.broker_url() == "redis://quickmig:p%40ss%3Aw%2Frd%3F%23@127.0.0.1:6379/0"
    assert cfg.redis_credentials() == ("quickmig", "p@ss:w/rd?#")


def test_webhook_secrets_and_the_api_token_come_from_the_file_their_own_file_or_the_environment(
        tmp_path, monkeypatch):
    secret_file(tmp_path, "hook.secret", "s" * 20 + "\n")
    secret_file(tmp_path, "api.token", "token-from-its-file\n")
    monkeypatch.setenv("QM_HOOK", "e" * 24)
    cfg = with_creds(tmp_path, 'winrm_password = "a"\nsmb_password = "b"\n'
                               '[webhooks.inline]\nsecret = "' + "i" * 16 + '"\n'
                               '[webhooks.filed]\nsecret_file = "hook.secret"\n'
                               '[webhooks.env]\nsecret_env = "QM_HOOK"\n'
                               '[api]\ntoken_file = "api.token"\n')
    assert cfg.webhook_secrets() == {"inline": "i" * 16, "filed": "s" * 20, "env": "e" * 24}
    assert cfg.api_token() == "token-from-its-file"
    monkeypatch.setenv("QM_API", "token-from-env")
    cfg = with_creds(tmp_path, 'winrm_password = "a"\nsmb_password = "b"\n[api]\ntoken_env = "QM_API"\n')
    assert cfg.api_token() == "token-from-env" and cfg.webhook_secrets() == {}
    assert with_creds(tmp_path, 'winrm_password = "a"\nsmb_password = "b"\n').api_token() is None


@pytest.mark.parametrize("text, says", [
    ('[webhooks.w]\nsecret_file = "open.secret"\n', r"\[webhooks.w\]: secret_file .*open.secret is open to group "
                                                    r"or others \(mode 0644\); run: chmod 600"),
    ('[webhooks.w]\nsecret = "' + "x" * 16 + '"\nsecret_env = "X"\n',
     r"\[webhooks.w\]: give one of secret, secret_file, secret_env, not secret and secret_env"),
    ('[webhooks.w]\nsecret = "short"\n', r"\[webhooks.w\]: the secret must be at least 16 characters"),
    ('[webhooks.w]\nsecret_env = "QM_NOT_SET_ANYWHERE"\n', r"QM_NOT_SET_ANYWHERE is empty or not set"),
    ('[webhooks.w]\nsecret = "' + "x" * 16 + '"\nsecrett = "y"\n', r"\[webhooks.w\]: unknown key 'secrett'"),
    ('[api]\ntoken_file = "open.secret"\n', r"\[api\]: token_file .*open.secret is open to group or others"),
    ('[api]\ntoken = "a"\ntoken_file = "open.secret"\n', r"give one of token, token_file, token_env"),
])
def test_a_webhook_secret_or_api_token_that_cannot_be_used_is_one_line_naming_it(tmp_path, text, says):
    secret_file(tmp_path, "open.secret", "x" * 20, 0o644)
    cfg = with_creds(tmp_path, 'winrm_password = "a"\nsmb_password = "b"\n' + text)
    with pytest.raises(ConfigError, match=says):
        cfg.api_token() if text.startswith("[api]") else cfg.webhook_secrets()


def test_the_webhook_secrets_and_the_api_token_are_refused_from_an_open_credentials_file(tmp_path):
    cfg = with_creds(tmp_path, '[api]\ntoken = "t"\n[webhooks.w]\nsecret = "' + "x" * 16 + '"\n', mode=0o640)
    for read in (cfg.api_token, cfg.webhook_secrets):
        with pytest.raises(ConfigError, match=r"credentials file .* is open to group or others \(mode 0640\)"):
            read()


def test_a_rediss_url_may_not_turn_certificate_checks_off(tmp_path):
    path = tmp_path / "quickmig.toml"
    for reqs in ("none", "optional", "CERT_NONE"):
        path.write_text(f'redis_url = "rediss://redis.example:6380/0?ssl_cert_reqs={reqs}"\n')
        with pytest.raises(ConfigError, match=f"ssl_cert_reqs={reqs}; quickmig verifies"):
            load_config(path)
    path.write_text('redis_url = "rediss://redis.example:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem"\n')
    assert load_config(path).redis_url.startswith("rediss://")


def test_the_apis_tls_files_are_both_or_neither_relative_to_the_config_and_ca_file_is_for_https(tmp_path):
    path = tmp_path / "quickmig.toml"
    path.write_text('redis_url = "redis://127.0.0.1:6379/0"\n[api]\ntls_cert = "tls/api.crt"\ntls_key = "/k/api.key"\n')
    api = load_config(path).api
    assert (api.tls_cert, api.tls_key, api.ca_file) == (tmp_path / "tls/api.crt", Path("/k/api.key"), None)
    path.write_text('redis_url = "redis://127.0.0.1:6379/0"\n[api]\ntls_cert = "api.crt"\n')
    with pytest.raises(ConfigError, match=r"\[api\]: give both tls_cert and tls_key"):
        load_config(path)
    path.write_text('[api]\nurl = "https://api.example:8780"\nca_file = "ca.pem"\n')
    cfg = load_config(path)
    assert cfg.api.ca_file == tmp_path / "ca.pem" and cfg.warnings() == []
    path.write_text('[api]\nurl = "http://api.example:8780"\nca_file = "ca.pem"\n')
    with pytest.raises(ConfigError, match=r"\[api\]: ca_file is the CAs an https:// url is checked against"):
        load_config(path)
    path.write_text('[api]\nurl = "http://api.example:8780"\n')
    assert any("plain HTTP to another machine" in w for w in load_config(path).warnings())
    path.write_text('[api]\nurl = "http://127.0.0.1:8780"\n')
    assert load_config(path).warnings() == []
