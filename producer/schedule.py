"""A plan's predicted schedule: an event-driven simulation of the admission rules.

Not a sum of copy times: members wait for what the fleet would make them wait for, in the
order it would. Each member runs these phases, as the workers do:

  waiting   its group's `after` groups have not all completed, or no room: the plan's
            `concurrency`, and `max_migrations` on its source and on its destination
            (workers.coord.admission: first in line first, a member whose hosts are full
            does not hold up one behind it whose hosts are free)
  setup     admitted: the checkpoint (snapshot step), `setup_s`
  copy      the base copy: it holds a copy slot reading on the source and one writing on
            the destination (`max_copies`, workers.coord.slots) and moves `copy_bytes` at
            its own measured rate, or less where the global or the pair's bandwidth limit
            (workers.coord.throttle) is shared with the other copies running then
  gate      pre-copy rounds and prepare, `gate_s`; then it is ready
  cutover   once ready and its window open (and, for a `together` group, once every
            member is ready: they start together), `downtime_s`, then `finish_s`
Places are held from admission to the end of `finish`; a group completes when its last
member does, and frees the groups that name it in `after`.

Between two events every rate is constant, so the simulation jumps from event to event
(a phase ending, a copy finishing at its current rate, a window opening); a member that can
never be admitted (a together group larger than what its hosts or the plan allow at once)
is reported as such rather than waited for.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field

EPS = 1e-9


@dataclass
class Job:
    key: str
    group: str
    source: str
    destination: str
    copy_bytes: float
    copy_bps: float             # this member's copy rate alone, limits aside
    downtime_s: float
    setup_s: float
    gate_s: float
    finish_s: float
    not_before: float | None = None  # its cutover window opens (Unix time)
    window_end: float | None = None
    held: bool = False  # already admitted (a live ETA's running member): it holds its places
    # results
    start: float | None = None        # admitted
    copy_start: float | None = None
    copy_end: float | None = None
    ready: float | None = None
    cutover_start: float | None = None
    cutover_end: float | None = None
    finish: float | None = None
    problem: str | None = None
    _left: float = 0.0
    _rate: float = 0.0


@dataclass(frozen=True)
class GroupSpec:
    name: str
    after: tuple[str, ...]
    together: bool
    # a together group rolls back when its members are ready further apart than this (None: not checked)
    prepared_wait_s: float | None = None


@dataclass(frozen=True)
class HostLimits:
    max_migrations: int
    max_copies: int


@dataclass
class Result:
    jobs: list[Job]
    groups: dict[str, dict] = field(default_factory=dict)
    finish: float | None = None
    problems: list[str] = field(default_factory=list)


class _Sim:
    def __init__(self, jobs: list[Job], groups: list[GroupSpec], hosts: dict[str, HostLimits], concurrency: int,
                 global_bps: float | None, pair_bps: dict[tuple[str, str], float], start: float):
        self.jobs, self.hosts, self.concurrency = jobs, hosts, concurrency
        self.global_bps, self.pair_bps = global_bps or None, pair_bps
        self.t = start
        self.groups = {g.name: g for g in groups}
        self.members: dict[str, list[Job]] = defaultdict(list)
        for j in jobs:
            self.members[j.group].append(j)
        self.left = {g.name: len(self.members[g.name]) for g in groups}
        self.open_groups = {g.name for g in groups if not g.after}
        self.waiting: list[Job] = []  # eligible, in line
        self.blocked = {g.name: list(self.members[g.name]) for g in groups if g.after}
        for g in groups:
            if not g.after:
                self.waiting.extend(self.members[g.name])
        self.running = 0
        self.places: dict[str, int] = defaultdict(int)
        self.reading: dict[str, int] = defaultdict(int)
        self.writing: dict[str, int] = defaultdict(int)
        self.slot_line: list[Job] = []
        self.copying: list[Job] = []
        self.events: list[tuple[float, int, str, Job]] = []
        self.seq = 0
        self.done_groups: set[str] = set()

    def at(self, when: float, what: str, job: Job) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, what, job))

    def fits(self, j: Job) -> bool:
        return (self.running < self.concurrency
                and self.places[j.source] < self.hosts[j.source].max_migrations
                and self.places[j.destination] < self.hosts[j.destination].max_migrations)

    def admit(self) -> None:
        still = []
        for j in self.waiting:
            if j.held or self.fits(j):
                self.running += 1
                self.places[j.source] += 1
                self.places[j.destination] += 1
                j.start = self.t
                self.at(self.t + j.setup_s, "setup", j)
            else:
                still.append(j)
        self.waiting = still

    def take_slots(self) -> None:
        still = []
        for j in self.slot_line:
            if (self.reading[j.source] < self.hosts[j.source].max_copies
                    and self.writing[j.destination] < self.hosts[j.destination].max_copies):
                self.reading[j.source] += 1
                self.writing[j.destination] += 1
                j.copy_start, j._left = self.t, j.copy_bytes
                self.copying.append(j)
            else:
                still.append(j)
        self.slot_line = still

    def rates(self) -> None:
        per_pair: dict[tuple[str, str], int] = defaultdict(int)
        for j in self.copying:
            per_pair[(j.source, j.destination)] += 1
        n = len(self.copying)
        for j in self.copying:
            r = j.copy_bps
            if self.global_bps:
                r = min(r, self.global_bps / n)
            pair = self.pair_bps.get((j.source, j.destination))
            if pair:
                r = min(r, pair / per_pair[(j.source, j.destination)])
            j._rate = r

    def next_copy_end(self) -> float | None:
        ends = [self.t + j._left / j._rate for j in self.copying if j._rate > 0]
        return min(ends) if ends else None

    def advance(self, to: float) -> None:
        dt = to - self.t
        for j in self.copying:
            j._left -= j._rate * dt
        self.t = to

    def copies_done(self) -> None:
        # within a byte or a microsecond of its end: float rounding must not leave a sliver
        done = [j for j in self.copying if j._left <= max(1.0, j._rate * 1e-6)]
        for j in done:
            self.copying.remove(j)
            self.reading[j.source] -= 1
            self.writing[j.destination] -= 1
            j.copy_end = self.t
            self.at(self.t + j.gate_s, "gate", j)

    def on_event(self, what: str, j: Job) -> None:
        if what == "setup":
            self.slot_line.append(j)
        elif what == "gate":
            j.ready = self.t
            self.ready(j)
        elif what == "window":
            self.cut(j)
        elif what == "cutover":
            j.cutover_end = self.t
            self.at(self.t + j.finish_s, "finish", j)
        elif what == "finish":
            j.finish = self.t
            self.end(j)

    def ready(self, j: Job) -> None:
        if not self.groups[j.group].together:
            self.at_window(j, [j])
            return
        members = self.members[j.group]
        if all(m.ready is not None for m in members):
            self.at_window(j, members)

    def at_window(self, j: Job, movers: list[Job]) -> None:
        opens = max((m.not_before or 0.0) for m in movers)
        for m in movers:
            if opens > self.t:
                self.at(opens, "window", m)
            else:
                self.cut(m)

    def cut(self, j: Job) -> None:
        j.cutover_start = self.t
        if j.window_end is not None and self.t + j.downtime_s > j.window_end:
            j.problem = "predicted to be ready after its cutover window closes"
        self.at(self.t + j.downtime_s, "cutover", j)

    def end(self, j: Job) -> None:
        self.running -= 1
        self.places[j.source] -= 1
        self.places[j.destination] -= 1
        self.left[j.group] -= 1
        if self.left[j.group] == 0:
            self.group_done(j.group)

    def group_done(self, name: str) -> None:
        self.done_groups.add(name)
        for g, blocked in list(self.blocked.items()):
            if all(a in self.done_groups for a in self.groups[g].after):
                self.waiting.extend(blocked)
                del self.blocked[g]
                if not blocked:
                    self.group_done(g)

    def run(self) -> None:
        for name, n in list(self.left.items()):
            if n == 0 and not self.groups[name].after:
                self.group_done(name)
        while True:
            self.admit()
            self.take_slots()
            self.rates()
            copy_end = self.next_copy_end()
            event_t = self.events[0][0] if self.events else None
            if copy_end is None and event_t is None:
                return
            to = min(t for t in (copy_end, event_t) if t is not None)
            # the copies that end at `to` end there, whatever float rounding leaves of them
            ending = [j for j in self.copying if j._rate > 0 and self.t + j._left / j._rate <= to + EPS]
            self.advance(max(to, self.t))
            for j in ending:
                j._left = 0.0
            self.copies_done()
            while self.events and self.events[0][0] <= self.t + EPS:
                _, _, what, j = heapq.heappop(self.events)
                self.on_event(what, j)


def _span(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02}m" if s >= 3600 else f"{s // 60}m{s % 60:02}s"


def simulate(jobs: list[Job], groups: list[GroupSpec], hosts: dict[str, HostLimits], concurrency: int, *,
             global_bps: float | None = None, pair_bps: dict[tuple[str, str], float] | None = None,
             start: float = 0.0) -> Result:
    """Fill in each job's predicted times; `jobs` in the plan's order (the order they queue)."""
    res = Result(jobs=jobs)
    for g in groups:
        if not g.together:
            continue
        members = [j for j in jobs if j.group == g.name]
        load: dict[str, int] = defaultdict(int)
        for j in members:
            load[j.source] += 1
            load[j.destination] += 1
        over = [h for h, n in sorted(load.items()) if n > hosts[h].max_migrations]
        if len(members) > concurrency or over:
            why = (f"its {len(members)} members exceed the plan's concurrency ({concurrency})"
                   if len(members) > concurrency else
                   f"{over[0]} would need {load[over[0]]} migrations at once (max_migrations "
                   f"{hosts[over[0]].max_migrations})")
            res.problems.append(f"group {g.name} switches over together but can never have all its members "
                                f"admitted at once: {why}")
    # the simulation keeps time from 0, where a float still resolves microseconds (at Unix
    # times it would not, and a copy's last bytes would never seem to end)
    sim = _Sim(jobs, groups, hosts, concurrency, global_bps, pair_bps or {}, 0.0)
    sim.run()
    for j in jobs:
        for name in ("start", "copy_start", "copy_end", "ready", "cutover_start", "cutover_end", "finish"):
            if getattr(j, name) is not None:
                setattr(j, name, getattr(j, name) + start)
    for j in jobs:
        if j.finish is None and j.problem is None:
            j.problem = "never admitted: " + ("a group it comes after does not complete"
                                              if j.group in sim.blocked else
                                              "it waits for places its group's other members hold")
    for g in groups:
        ms = [j for j in jobs if j.group == g.name]
        ends = [j.finish for j in ms if j.finish is not None]
        starts = [j.start for j in ms if j.start is not None]
        entry: dict = {"start": min(starts) if starts else None,
                       "finish": max(ends) if len(ends) == len(ms) and ms else None}
        cuts = [j for j in ms if j.cutover_start is not None and j.cutover_end is not None]
        if cuts:
            entry["switchover_span"] = (max(j.cutover_end for j in cuts if j.cutover_end is not None)
                                        - min(j.cutover_start for j in cuts if j.cutover_start is not None))
        res.groups[g.name] = entry
        readies = [j.ready for j in ms if j.ready is not None]
        if g.together and g.prepared_wait_s is not None and len(readies) == len(ms) > 1 \
                and max(readies) - min(readies) > g.prepared_wait_s:
            res.problems.append(
                f"group {g.name} switches over together but its members are predicted ready "
                f"{_span(max(readies) - min(readies))} apart, more than the {_span(g.prepared_wait_s)} it waits at "
                "prepared: it would roll back with every VM still on its source (set the group's prepared_wait "
                "above that, or put the slow members in a group of their own)")
    finishes = [j.finish for j in jobs if j.finish is not None]
    res.finish = max(finishes) if finishes and len(finishes) == len(jobs) else None
    res.problems += [f"{j.key}: {j.problem}" for j in jobs if j.problem]
    return res
