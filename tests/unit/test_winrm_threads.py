"""WinRM calls from several threads at once (the downtime copy checks its files side by
side): requests' proxy lookup, which pywinrm goes through for every message, must not fail
when threads meet in it (psf/requests#4997)."""
import os
import threading

import requests.utils

from workers.hyperv import driver  # noqa: F401 - importing the driver makes the lookups take turns

URL = "http://127.0.0.1:5985/wsman"


def test_proxy_lookups_from_many_threads_at_once_never_fail(monkeypatch):
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def lookups() -> None:
        start.wait()
        for _ in range(3000):
            try:  # what pywinrm's session does for each message, with its proxy=None
                requests.utils.get_environ_proxies(URL, no_proxy="*")
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)
                return

    threads = [threading.Thread(target=lookups) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert "no_proxy" not in os.environ  # nothing left behind either
