"""Text from hosts and records reaches a terminal with its control and format characters
shown as escapes (producer.terminal), in every view that prints a record."""
import json
import time

from producer import report, terminal, watch

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[1A\u202eevil\x9b2J\x00\x7f\u200b"
RAW = ("\x1b", "\x07", "\u202e", "\x9b", "\x00", "\x7f", "\u200b")


def record(**over):
    rec = {"id": "0123456789abcdef", "vm": "web\x1b[31m01", "source": "hv1", "destination": "hv2",
           "state": "copying", "created_at": time.time(), "error": "host said: " + HOSTILE,
           "waiting": "waits for " + HOSTILE, "bytes_total": 100,
           "progress": {"bytes_done": 10, "bytes_total": 100, "rate_bps": 5.0, "eta_seconds": 3,
                        "file": "disk\x1b]52;c;Y2xpcA==\x07.vhdx", "at": time.time()}}
    rec.update(over)
    return rec


def test_text_shows_every_control_and_format_character_as_its_escape_and_keeps_letters():
    out = terminal.text("Größe 中文 " + HOSTILE + " \U000e0041")
    assert not any(c in out for c in RAW + ("\U000e0041",))
    assert out.startswith("Größe 中文 \\x1b]0;pwned\\x07\\x1b[2J") and "\\u202e" in out and "\\U000e0041" in out


def test_every_view_of_a_record_prints_no_raw_escape():
    rec = record()
    for out in (report.summary(rec), report.one_line(rec), watch.line(rec, time.time()),
                watch.screen([rec], time.time())):
        assert not any(c in out for c in RAW), repr(out)
        assert "\\x1b" in out


def test_json_output_escapes_them_and_still_means_the_same_record():
    rec = record()
    out = terminal.json_text(rec)
    assert not any(c in out for c in RAW), repr(out)
    assert json.loads(out) == rec and "é" in terminal.json_text({"v": "é"})


def test_status_names_each_drive_the_migration_empties_on_the_destination_and_says_when_it_is_done():
    eject = [{"path": "C:\\Users\\x\\a" + HOSTILE + ".iso", "drive": "SCSI 0:1"}]
    before = report.summary(record(ejected_isos=eject))
    assert "ISO to eject    C:\\Users\\x\\a" in before and "(DVD drive SCSI 0:1, on hv2)" in before
    assert not any(c in before for c in RAW)
    done = report.summary(record(ejected_isos=eject, state="completed"))
    assert "ejected ISO     C:\\Users\\x\\a" in done
    assert "ISO" not in report.summary(record(state="completed")).replace("ISO 8601", "")
