"""Redis with an ACL user and over TLS, against real redis-server processes: the user and
password come from credentials.toml (here from a secret file of their own), and the
server's certificate is verified by the store and the Celery broker alike."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab import processes
from lab.ports import free_port
from workers.model.config import load_config

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-redis-Pa55:/@?"  # characters a URL must quote


def _cert(subject: str, issuer_key, issuer_name, key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, obj) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    d = tmp_path_factory.mktemp("redis-tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quickmig test CA")])
    ca = _cert("quickmig test CA", ca_key, ca_name, ca_key, ca=True)
    files = {"ca": _pem(d / "ca.pem", ca), "cert": _pem(d / "server.pem", _cert("localhost", ca_key, ca_name, key,
                                                                                  ca=False)),
             "key": _pem(d / "server.key", key)}
    port, tls_port = free_port(), free_port()
    conf = d / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {d}\n"
                    f"tls-port {tls_port}\ntls-cert-file {files['cert']}\ntls-key-file {files['key']}\n"
                    f"tls-ca-cert-file {files['ca']}\ntls-auth-clients no\n"
                    f"user default off\nuser quickmig on >{PASSWORD} ~* &* +@all\n")
    conf.chmod(0o600)
    proc = processes.spawn(["redis-server", str(conf)], d / "redis.log")
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port, username="quickmig", password=PASSWORD).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, (d / "redis.log").read_text()
            time.sleep(0.1)
    yield {"dir": d, "port": port, "tls_port": tls_port, **files}
    processes.stop(proc)


def write_config(d: Path, url: str, redis_table: str) -> Path:
    conf = d / "quickmig.toml"
    conf.write_text(f'redis_url = "{url}"\ncredentials_file = "credentials.toml"\n')
    cred = d / "credentials.toml"
    cred.write_text('[default]\nwinrm_username = "u"\nwinrm_password = "p"\nsmb_username = "u"\n'
                    f'smb_password = "p"\n{redis_table}')
    cred.chmod(0o600)
    secret = d / "redis.secret"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    return conf


def celery_reaches(conf: Path) -> subprocess.CompletedProcess:
    """A fresh process (the app is configured once per process) that opens the broker."""
    code = ("import sys\nfrom workers.engine.app import app\n"
            "try:\n    app.connection_for_write().ensure_connection(max_retries=1, timeout=5)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n    sys.exit(1)\nprint('connected')\n")
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, QUICKMIG_CONFIG=str(conf)),
                          capture_output=True, text=True, timeout=60)


def cli(conf: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "producer.cli", "--config", str(conf), *args],
                          capture_output=True, text=True, timeout=60)


def test_the_acl_user_and_its_password_file_open_redis_for_store_cli_and_broker(servers, tmp_path):
    conf = write_config(tmp_path, f"redis://127.0.0.1:{servers['port']}/0",
                        '[redis]\nusername = "quickmig"\npassword_file = "redis.secret"\n')
    cfg = load_config(conf)
    assert PASSWORD not in cfg.redis_url and cfg.broker_url() != cfg.redis_url
    assert redis.Redis.from_url(cfg.broker_url()).ping()
    assert cli(conf, "list").returncode == 0
    res = celery_reaches(conf)
    assert res.returncode == 0 and "connected" in res.stdout, res.stdout + res.stderr
    # without them: one line, exit 2, no password anywhere in it
    (tmp_path / "bare").mkdir()
    bare = write_config(tmp_path / "bare", f"redis://127.0.0.1:{servers['port']}/0", "")
    res = cli(bare, "list")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and PASSWORD not in res.stderr, res.stderr


@pytest.mark.parametrize("with_ca", [False, True], ids=["unknown-ca", "named-ca"])
def test_tls_to_redis_verifies_the_certificate_for_store_and_broker(servers, tmp_path, with_ca):
    query = f"?ssl_ca_certs={servers['ca']}" if with_ca else ""
    conf = write_config(tmp_path, f"rediss://localhost:{servers['tls_port']}/0{query}",
                        '[redis]\nusername = "quickmig"\npassword_env = "QM_TEST_REDIS_PASSWORD"\n')
    os.environ["QM_TEST_REDIS_PASSWORD"] = PASSWORD
    try:
        cfg = load_config(conf)
        store = redis.Redis.from_url(cfg.broker_url(), socket_connect_timeout=5)
        broker = celery_reaches(conf)
        listed = cli(conf, "list")
    finally:
        del os.environ["QM_TEST_REDIS_PASSWORD"]
    if with_ca:
        assert store.ping()
        assert broker.returncode == 0, broker.stdout + broker.stderr
        assert listed.returncode == 0, listed.stderr
    else:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            store.ping()
        assert broker.returncode == 1 and "certificate verify failed" in broker.stdout, broker.stdout + broker.stderr
        assert listed.returncode == 2 and "certificate verify failed" in listed.stderr, listed.stderr


def test_a_url_that_turns_certificate_checks_off_is_refused(tmp_path):
    conf = write_config(tmp_path, "rediss://localhost:6380/0?ssl_cert_reqs=none", "")
    res = cli(conf, "config", "check")
    assert res.returncode == 2 and "ssl_cert_reqs=none" in res.stderr, res.stderr
