"""Log lines carry mid and phase from the step, the running task or Celery's task lines;
JSON output is one object per line."""
import json
import logging

import pytest

from workers.model.config import ConfigError
from workers.obs import logs


@pytest.fixture
def json_log(tmp_path, monkeypatch):
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    path = tmp_path / "w.log"
    h = logs.configure(logging.INFO, str(path))
    yield lambda: [json.loads(ln) for ln in path.read_text().splitlines()]
    root.removeHandler(h)
    h.close()
    root.handlers[:], root.level = saved[0], saved[1]


def test_json_lines_carry_mid_and_phase_from_every_source(json_log):
    lg = logging.getLogger("quickmig.test")
    lg.info("outside any migration")
    with logs.bound("0123456789abcdef", "copy"):
        logging.getLogger("smbprotocol.whatever").warning("library line %s", "inside")
        logging.LoggerAdapter(lg, {"mid": "0123456789abcdef", "phase": "rollback"}).info("step line")
    ctx = {"id": "t1", "name": "quickmig.cutover", "args": "['fedcba9876543210']"}
    logging.getLogger("celery.app.trace").info("Task %(name)s[%(id)s] received", ctx, extra={"data": ctx})
    out = json_log()
    assert [(d["mid"], d["phase"]) for d in out] == [
        ("-", "-"), ("0123456789abcdef", "copy"), ("0123456789abcdef", "rollback"), ("fedcba9876543210", "cutover")]
    assert out[1]["msg"] == "library line inside" and out[1]["level"] == "WARNING"
    assert out[3]["msg"] == "Task quickmig.cutover[t1] received"
    assert all(d["ts"].endswith("Z") and d["pid"] for d in out)


def test_an_unknown_log_format_is_refused_clearly(monkeypatch):
    monkeypatch.setenv(logs.FORMAT_ENV, "xml")
    with pytest.raises(ConfigError, match="not one of text, json"):
        logs.chosen_format()
