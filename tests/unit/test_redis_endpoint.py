"""redis_url under Sentinel: what a URL names, what is refused (one line naming the fix), and
what Celery's kombu is given for the same URL."""
import re
import ssl

import pytest

from workers.model import redis_endpoint as re_


def test_a_sentinel_url_names_its_members_service_and_db():
    t = re_.parse_sentinel("redis+sentinel://s1:26380,s2,[::1]:26381/fleet/3")
    assert t.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (t.service, t.db, t.tls) == ("fleet", 3, False)


def test_tls_files_and_acl_credentials_reach_both_hops():
    url = re_.with_auth("rediss+sentinel://s1:1,s2:2/fleet?ssl_ca_certs=/etc/ca.pem", "qm", "p@ss:word")
    t = re_.parse_sentinel(url)
    assert (t.username, t.password, t.tls, t.tls_options) == ("qm", "p@ss:word", True, {"ssl_ca_certs": "/etc/ca.pem"})
    broker, options, tls = re_.celery_broker(url, ("sent", "sentpw"))
    assert broker == "sentinel://qm:p%40ss%3Aword@s1:1/0;sentinel://qm:p%40ss%3Aword@s2:2/0"
    assert options["master_name"] == "fleet"
    assert options["sentinel_kwargs"]["password"] == "sentpw" and options["sentinel_kwargs"]["ssl"] is True
    assert tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem"}


def test_a_single_server_url_goes_to_celery_unchanged():
    assert re_.celery_broker("redis://127.0.0.1:6379/0") == ("redis://127.0.0.1:6379/0", {}, None)


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://s1:26379", "names the master's service"),
    ("redis+sentinel://s1:26379/a/b/c", "names the master's service"),
    ("redis+sentinel://s1:x/fleet", "port must be a number"),
    ("redis+sentinel://:1/fleet", "has no host"),
    ("redis+sentinel://s1/fleet/zero", "must be a number"),
    ("redis+sentinel://s1/fleet?ssl_cert_reqs=none", "takes only"),
    ("redis+sentinel://s1/fleet?ssl_ca_certs=/ca.pem", "rediss+sentinel:// URL only"),
])
def test_a_bad_sentinel_url_is_refused_saying_what_to_fix(url, says):
    with pytest.raises(re_.RedisUrlError, match=re.escape(says)):
        re_.parse_sentinel(url)


def test_the_config_refuses_a_bad_sentinel_url_in_one_line(tmp_path):
    from workers.model.config import ConfigError, load_config
    p = tmp_path / "quickmig.toml"
    p.write_text('redis_url = "redis+sentinel://s1:26379"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "redis_url" in str(e.value) and "\n" not in str(e.value)
