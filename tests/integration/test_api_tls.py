"""`quickmig api` over HTTPS: a certificate authority and a server certificate made here
(cryptography), a real `quickmig api` process on the lab's Redis with `[api] tls_cert` /
`tls_key`, and callers that do or do not trust that authority. The lab's own API stays
plain HTTP on loopback (test_api.py checks its URL)."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab.ports import free_port

pytestmark = pytest.mark.integration


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(d: Path, cn: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = d / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(d: Path, ca_key, ca_cert) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("quickmig-api")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = d / "api.crt", d / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class TlsApi:
    def __init__(self, lab, d: Path):
        self.lab, self.dir = lab, d
        self.ca, ca_key, ca_cert = make_ca(d, "quickmig-test-ca")
        self.other_ca, _, _ = make_ca(d, "someone-elses-ca")
        self.cert, self.key = make_server_cert(d, ca_key, ca_cert)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.config = self.server_config(self.cert, self.key)
        self.token = (lab.dir / "api-token").read_text().strip()
        self.proc: subprocess.Popen | None = None

    def server_config(self, cert: Path, key: Path, name: str = "api-tls.toml") -> Path:
        """The lab's config (its Redis, hosts and credentials) with the API's certificate and key."""
        text = lab_text = self.lab.config_path.read_text()
        text = lab_text.replace('credentials_file = "', f'credentials_file = "{self.lab.dir}/', 1)
        assert text.count("[api]\n") == 1
        text = text.replace("[api]\n", f'[api]\ntls_cert = "{cert}"\ntls_key = "{key}"\n', 1)
        path = self.dir / name
        path.write_text(text)
        return path

    def serve(self, config: Path, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "w") if log else subprocess.PIPE  # the server writes its log there while it runs
        return subprocess.Popen([sys.executable, "-m", "producer.cli", "api", "--config", str(config),
                                 "--port", str(self.port)], stdout=out, stderr=out, text=True)

    def start(self) -> None:
        log = self.dir / "api.log"
        self.proc = self.serve(self.config, log)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(self.url + "/healthz", verify=self.trusting(self.ca), timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "quickmig api over https did not answer in 60 s"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @staticmethod
    def trusting(ca: Path) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(ca))

    def cli(self, client_config: str, *args: str) -> subprocess.CompletedProcess:
        path = self.dir / "client.toml"
        path.write_text(client_config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMIG_")}
        env.update(QUICKMIG_CONFIG=str(path), QUICKMIG_API_TOKEN=self.token)
        return subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env, cwd=self.dir,
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tls_api(lab, tmp_path_factory):
    api = TlsApi(lab, tmp_path_factory.mktemp("api-tls"))
    api.start()
    yield api
    api.stop()


def test_the_api_serves_https_and_only_to_callers_that_trust_its_certificate(tls_api):
    auth = {"Authorization": f"Bearer {tls_api.token}"}
    with httpx.Client(base_url=tls_api.url, verify=tls_api.trusting(tls_api.ca), timeout=30) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        res = c.get("/v1/migrations", headers=auth)
        assert res.status_code == 200 and "items" in res.json()
    # a caller trusting another authority, or only the system's, is refused at the handshake
    for verify in (tls_api.trusting(tls_api.other_ca), ssl.create_default_context()):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(tls_api.url + "/healthz", verify=verify, timeout=10)
    # plain HTTP to the HTTPS port gets no answer
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_api.port}/v1/migrations", headers=auth, timeout=10)


def test_the_cli_over_the_api_checks_the_certificate_against_its_ca_file(tls_api):
    ok = tls_api.cli(f'[api]\nurl = "{tls_api.url}"\nca_file = "{tls_api.ca}"\n', "list", "--json")
    assert ok.returncode == 0, ok.stderr
    assert isinstance(json.loads(ok.stdout), list)
    for config in (f'[api]\nurl = "{tls_api.url}"\n',  # the system's CAs only
                   f'[api]\nurl = "{tls_api.url}"\nca_file = "{tls_api.other_ca}"\n'):
        res = tls_api.cli(config, "list", "--json")
        assert res.returncode == 2 and not res.stdout
        assert res.stderr.count("\n") == 1, res.stderr
        assert "has a certificate this machine does not trust" in res.stderr and "[api] ca_file" in res.stderr
    # an http:// url to the HTTPS port: no answer, not a silent downgrade
    res = tls_api.cli(f'[api]\nurl = "http://127.0.0.1:{tls_api.port}"\n', "list", "--json")
    assert res.returncode == 2 and "cannot reach the API" in res.stderr and res.stderr.count("\n") == 1
    # the CA file belongs to https only
    res = tls_api.cli(f'[api]\nurl = "http://127.0.0.1:{tls_api.port}"\nca_file = "{tls_api.ca}"\n', "list")
    assert res.returncode == 2 and "ca_file is the CAs an https:// url is checked against" in res.stderr


def test_a_key_others_may_read_or_a_key_not_the_certificates_is_one_line_and_exit_2(tls_api):
    open_key = tls_api.dir / "open.key"
    open_key.write_bytes(tls_api.key.read_bytes())
    open_key.chmod(0o644)
    p = tls_api.serve(tls_api.server_config(tls_api.cert, open_key, "open.toml"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.startswith("quickmig: [api] tls_key") and "chmod 600" in err, err
    assert err.count("\n") == 1, err
    stranger = tls_api.dir / "stranger.key"
    stranger.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    stranger.chmod(0o600)
    p = tls_api.serve(tls_api.server_config(tls_api.cert, stranger, "stranger.toml"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "cannot serve HTTPS" in err and err.count("\n") == 1, err
    # the same checks for a missing key and for tls_cert without tls_key
    missing = tls_api.dir / "missing.key"
    p = tls_api.serve(tls_api.server_config(tls_api.cert, missing, "missing.toml"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "missing.key" in err and err.count("\n") == 1, err
    half = tls_api.dir / "half.toml"
    half.write_text(tls_api.config.read_text().replace(f'tls_key = "{tls_api.key}"\n', ""))
    p = tls_api.serve(half)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "give both tls_cert and tls_key" in err, err
