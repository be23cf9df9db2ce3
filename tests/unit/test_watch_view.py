"""The live view renders what a record says, and degrades when progress fields are absent."""
import io

from producer import watch


def rec(**kw):
    base = {"id": "abcdef0123456789", "vm": "web01", "source": "hv1", "destination": "hv2",
            "state": "copying", "bytes_copied": 0, "bytes_total": None, "created_at": 1000.0}
    base.update(kw)
    return base


def test_a_copy_with_full_progress_shows_bar_rate_and_eta():
    r = rec(bytes_total=200 * 2**20, progress={"file": "x.vhdx", "bytes_done": 100 * 2**20,
                                               "bytes_total": 200 * 2**20, "rate_bps": 50e6,
                                               "eta_seconds": 125, "at": 1010.0})
    text = watch.line(r, 1011.0)
    assert "[##########..........]" in text and " 50%" in text
    assert "50.0 MB/s" in text and "eta    2:05" in text
    assert "100.0 MiB/200.0 MiB" in text
    assert "down       -" in text


def test_without_rate_or_total_the_rate_comes_from_successive_polls_and_no_bar_is_guessed():
    meter = watch.RateMeter()
    r1 = rec(progress={"bytes_done": 10e6, "at": 100.0})
    r2 = rec(progress={"bytes_done": 30e6, "at": 102.0})
    watch.line(r1, 100.0, meter)
    text = watch.line(r2, 102.0, meter)
    assert "10.0 MB/s" in text
    assert "[????????????????????]" in text and "eta       -" in text


def test_a_record_with_no_progress_at_all_still_renders():
    text = watch.line(rec(state="queued"), 1000.0)
    assert "queued" in text and "abcdef0123456789" in text


def test_downtime_counts_from_save_vm_until_the_final_value_is_known():
    r = rec(state="cutting_over", save_started_at=1000.0)
    assert "down    2.5s" in watch.line(r, 1002.5)
    r["downtime_seconds"] = 3.25
    assert "down    3.2s" in watch.line(r, 1010.0) or "down    3.3s" in watch.line(r, 1010.0)
    assert watch.downtime_so_far(rec(state="copying"), 5.0) is None


class FakeStore:
    def __init__(self, seq):
        self.seq = list(seq)

    def get(self, mid):
        return self.seq.pop(0) if len(self.seq) > 1 else self.seq[0]

    def active(self):
        return [r for r in self.seq if r["state"] not in ("completed", "rolled_back", "failed")]


def test_following_one_prints_plain_lines_on_change_and_returns_the_end_record():
    seq = [rec(state="queued"), rec(state="queued"), rec(state="copying"), rec(state="completed",
                                                                              downtime_seconds=1.5)]
    out = io.StringIO()
    final = watch.watch_one(FakeStore(seq), "abcdef0123456789", interval_s=0, out=out, tty=False)
    assert final["state"] == "completed"
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # queued once, copy, completed
    assert "\x1b" not in out.getvalue()


def test_watch_all_once_lists_every_active_migration():
    out = io.StringIO()
    watch.watch_all(FakeStore([rec(), rec(id="1111111111111111", state="cutting_over")]), once=True, out=out)
    text = out.getvalue()
    assert "2 active" in text and "abcdef0123456789" in text and "1111111111111111" in text
    assert "cutover" in text


def test_piped_watch_all_prints_again_only_when_something_changed():
    out = io.StringIO()
    store = FakeStore([rec(state="queued")])
    watch.watch_all(store, interval_s=0, out=out, tty=False, iterations=5)
    assert out.getvalue().count("1 active") == 1


def test_reading_the_same_sample_twice_keeps_the_derived_rate():
    meter = watch.RateMeter()
    meter.rate("m", 0, 10.0)
    assert meter.rate("m", 20e6, 12.0) == 10e6
    assert meter.rate("m", 20e6, 12.0) == 10e6
    assert meter.rate("m", 40e6, 14.0) == 10e6


def test_on_a_terminal_the_view_redraws_in_place():
    out = io.StringIO()
    watch.watch_all(FakeStore([rec()]), interval_s=0, out=out, tty=True, iterations=2)
    assert out.getvalue().count(watch.CLEAR) == 2
    out = io.StringIO()
    watch.watch_one(FakeStore([rec(), rec(state="rolled_back")]), "abcdef0123456789", interval_s=0, out=out,
                    tty=True)
    assert out.getvalue().count("\r\x1b[K") == 2 and out.getvalue().endswith("\n")


def test_a_waiting_migration_says_why_and_a_new_reason_prints_again_when_piped():
    reasons = iter(["waiting: hv1 has 2 migrations (limit 2)"] * 2 + ["waiting: hv2 has 2 migrations (limit 2)"] * 3)

    def note(recs):
        for r in recs:
            r["waiting"] = next(reasons)
        return recs

    out = io.StringIO()
    watch.watch_all(FakeStore([rec(state="queued")]), interval_s=0, out=out, tty=False, iterations=5, note=note)
    text = out.getvalue()
    assert text.count("1 active") == 2
    assert "waiting: hv1 has 2 migrations (limit 2)" in text and "waiting: hv2 has 2" in text
