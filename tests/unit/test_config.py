"""quickmig.toml is checked whole when it loads: every section typed, a bad value refused
with one line naming the key, before anything runs."""
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
    with pytest.raises(ConfigError, match="redis_url must be a redis://, rediss:// or unix:// URL"):
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
