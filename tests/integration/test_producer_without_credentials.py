"""A producer whose config holds no host credentials (only the workers do) still resolves
and validates a request: a worker of the snapshot pool looks the VM up for it."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def producer_config(lab, tmp_path):
    text = lab.config_path.read_text().replace('credentials_file = "credentials.toml"', "")
    assert "credentials_file" not in text
    path = tmp_path / "producer.toml"
    path.write_text(text)
    return path


def cli(config, *args):
    return subprocess.run([sys.executable, "-m", "producer.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300)


def test_a_producer_without_host_credentials_migrates_through_a_workers_lookup(lab, producer_config):
    from workers.model.config import load_config
    assert not load_config(producer_config).holds_host_credentials()
    lab.add_vm("nocreds-ok", "hv1")
    res = cli(producer_config, "migrate", "nocreds-ok", "--from", "hv1", "--to", "hv2", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "completed" in res.stdout


def test_its_refusals_are_the_same_lines(lab, producer_config):
    lab.add_vm("nocreds-where", "hv2")
    before = lab.redis_state()
    res = cli(producer_config, "migrate", "nocreds-where", "--from", "hv1", "--to", "hv3")
    assert res.returncode == 2 and "VM 'nocreds-where' is not on hv1; it is on hv2" in res.stderr, res.stderr
    res = cli(producer_config, "migrate", "nocreds-nowhere", "--from", "hv1", "--to", "hv3")
    assert res.returncode == 2 and "unknown VM 'nocreds-nowhere'" in res.stderr, res.stderr
    after = lab.redis_state()
    assert {k: v for k, v in after.items() if ":lookup:" not in k} == before  # nothing changed but the answers
