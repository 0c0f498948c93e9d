"""`python -m benchmarks.soak [--minutes N] [--quick]`: the soak run, its tables, exit status 1 when an
invariant or a resource does not hold (see the package's docstring and docs/soak.md)."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avatargen.testing import Receiver, Simulator
from benchmarks.harness import parse_args, scratch
from benchmarks.report import fmt, print_machine, print_table
from benchmarks.soak.faults import RUNPOD_FAULTS, SIM_FAULTS, Schedule, Strike
from benchmarks.soak.resources import GROWTH_LIMIT, Resources
from benchmarks.soak.setups import LOG_BACKUPS, LOG_MAX_BYTES, Setup, config_layer, files_setup, redis_setup
from benchmarks.soak.traffic import Owner, Panels, Served, Visitors
from benchmarks.soak.watch import Watch

QUICK_SECONDS, QUICK_DAY, FULL_DAY = 100.0, 40.0, 120.0
FIRST_FAULT_AFTER = 10.0
FAULT_CYCLE = 540.0  # every kind of fault at least once per ten minutes (a tenth to spare)
LIFE_FLOOR = FAULT_CYCLE / 2  # a life judged lasted this long: a process the schedule restarts lives a cycle
# The daily budget: a quarter of a day's seconds of machine time (30 s a day). What a run may spend is less
# the reserve for its end (see avatargen.generator.budget.reserve): the stop's bound (5.1 s) and, among
# replicas, the lease's takeover (13.3 s). A quick day's budget is three quarters of its 40 s, so that a
# replica's first run fits beside that reserve and the boot's bound.
BUDGET_SHARE, QUICK_BUDGET_SHARE = 0.25, 0.75
MACHINE_PRICE = 3600.0  # an hour of the machine, as its provider's API says (and gpu.hourly_cost): 1 a second
LOG_LIMIT = (LOG_BACKUPS + 1) * LOG_MAX_BYTES + 2_000  # the files avatargen.log may take (a line over at most)
# Seconds per run the ledger may bill over the machine's bill: it opens as the accepted start request goes out
# and closes at the poll (every 100 ms) that finds the machine off. Both are late by round trips, which a
# loaded machine stretches: each run may also be over by two of the soak's own slow round trips (the 90th
# percentile of its status reads around a machine read). A run billed twice is over by its whole length.
BILLING_SLACK = 1.0


def billing_slack(brackets: list[float]) -> float:
    """The seconds per run the ledger may be over the machine's bill, given the round trips seen."""
    slow = sorted(brackets)[int(len(brackets) * 0.9)] if brackets else 0.0
    return BILLING_SLACK + 2 * slow
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (WARNING|ERROR|CRITICAL)")


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the soak runs (default 60)")


@dataclass
class Team:
    """Everything that acts on or watches one setup."""

    setup: Setup
    served: Served
    visitors: Visitors
    panels: Panels
    owner: Owner
    watch: Watch
    schedule: Schedule

    def threads(self) -> list[threading.Thread]:
        return [part.thread for part in (self.visitors, self.panels, self.owner, self.watch, self.schedule)]


def warnings_at(logs: Sequence[Path]) -> list[float]:
    """When the setup's servers logged a warning or worse (their log lines carry local time)."""
    times = []
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                match = LOG_LINE.match(line)
                if match:
                    times.append(time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000)
    return times


def noticed(team: Team, strike: Strike, gap: float, warnings: list[float],
            receiver: Receiver) -> tuple[bool, bool, bool]:
    """Whether a strike showed in the status, the log and a notification (to the json:// receiver)."""
    until = strike.end + gap
    with team.watch.lock:
        looks = list(team.watch.looks)
    before = next((seen.trouble for seen in reversed(looks) if seen.at < strike.start), frozenset())
    status = any(seen.trouble - before for seen in looks if strike.start <= seen.at <= until)
    log = any(strike.start <= at <= until for at in warnings)
    message = bool(receiver.between(team.setup.name, strike.start, until))
    return status, log, message


def met_something(team: Team, strike: Strike) -> bool:
    """A simulator fault meets something when it struck (a run was on); a full disk when a run was on (nothing
    else writes); a replica frozen or killed when it held the generator (a replica serving visitors alone is
    the load balancer's to notice); the rest always."""
    if strike.hits is not None:
        return strike.hits > 0
    if strike.generator is not None:
        return strike.generator
    if strike.fault == "disk full":
        with team.watch.lock:
            return any(seen.run_id for seen in team.watch.looks if strike.start <= seen.at <= strike.end)
    return True


def fault_rows(teams: list[Team], gap: float,
               receiver: Receiver) -> tuple[list[list[object]], list[tuple[int, int]]]:
    """One row per setup and fault; and per setup, of the strikes that met something, how many and how many
    were noticed."""
    rows: list[list[object]] = []
    counts = []
    for team in teams:
        met = seen = 0
        warnings = warnings_at(team.setup.logs)
        for fault in team.schedule.faults:
            strikes = [strike for strike in team.schedule.strikes if strike.fault == fault]
            simulated = fault in SIM_FAULTS or fault in RUNPOD_FAULTS
            effective = [strike for strike in strikes if met_something(team, strike)]
            verdicts = [noticed(team, strike, gap, warnings, receiver) for strike in effective]
            met += len(verdicts)
            seen += sum(any(verdict) for verdict in verdicts)
            notes = [verdict[2] for verdict in verdicts]
            rows.append([team.setup.name, fault, len(strikes),
                         sum(strike.hits or 0 for strike in strikes) if simulated else "-", len(effective),
                         sum(status for status, _, _ in verdicts), sum(log for _, log, _ in verdicts),
                         sum(notes)])
        counts.append((met, seen))
    return rows, counts


def yes(holds: bool) -> str:
    return "yes" if holds else "NO"


def invariant_rows(teams: list[Team], machines_at_end: list[str], logs_largest: dict[str, tuple[int, int]],
                   faults: list[tuple[int, int]], quick: bool) -> list[list[object]]:
    """The invariants, one row each: the figure per setup, and whether it holds everywhere. A quick soak logs
    too little to see the log rotate (there it need only stay bounded), and its faults last 4 s: one that
    shows only when a request meets it (Redis slowed) may pass unseen, so noticing is judged by full soaks."""
    def row(name: str, cells: Sequence[object], holds: bool | None) -> list[object]:
        return [name, *cells, "not judged with --quick" if holds is None else yes(holds)]

    served = [team.served for team in teams]
    money = [team.watch.money for team in teams]
    billing = [(m.ledger_billed, m.machine_billed, len(m.runs_seen), billing_slack(m.brackets)) for m in money]
    billed_right = [machine * 0.95 - slack * runs <= ledger <= machine + slack * runs
                    for ledger, machine, runs, slack in billing]
    failures = [len(s.failures) for s in served]
    logs = [[counts for folder, counts in logs_largest.items() if f"/{team.setup.name}/" in folder] for team in teams]
    return [
        row("uniques served to two visitors", [len(s.uniques_twice) for s in served],
            not any(s.uniques_twice for s in served)),
        row("held images served", [len(s.held_served) for s in served], not any(s.held_served for s in served)),
        row("deleted images served", [len(s.deleted_served) for s in served],
            not any(s.deleted_served for s in served)),
        row("5xx to a visitor", [len(s.server_errors) for s in served], not any(s.server_errors for s in served)),
        row("visitor requests unanswered (slot not down on purpose)", failures, not any(failures)),
        row("billed seconds outside runs", [fmt(m.billed_outside_runs, 3) for m in money],
            all(m.billed_outside_runs <= 0.001 for m in money)),
        row("samples with the machine on and no run", [m.machine_on_without_run for m in money],
            not any(m.machine_on_without_run for m in money)),
        row("machine at the end", machines_at_end, all(state in ("off", "terminated") for state in machines_at_end)),
        row("automatic runs started over the daily budget", [len(m.auto_runs_over_budget) for m in money],
            not any(m.auto_runs_over_budget for m in money)),
        row("highest day's spend / daily budget (the spend never over the budget)",
            [fmt(m.highest_day_share, 3) for m in money], all(m.highest_day_share <= 1.0 + 1e-4 for m in money)),
        row("ledger s / machine billed s = ratio (nothing billed twice or unbilled)",
            [f"{fmt(ledger, 1)} / {fmt(machine, 1)} = {fmt(ledger / machine if machine else 0, 3)}"
             for ledger, machine, _, _ in billing], all(billed_right)),
        row("faults noticed in the status, the log or a notification (of those that met something)",
            [f"{seen} of {met}" for met, seen in faults],
            None if quick else all(met == seen for met, seen in faults)),
        row(f"log files at most, and their kB (rotated at {LOG_MAX_BYTES // 1000} kB, {LOG_BACKUPS} kept)",
            [", ".join(f"{count} files, {size / 1000:.0f} kB" for count, size in folders) for folders in logs],
            all((quick or count > 1) and count <= LOG_BACKUPS + 1 and size <= LOG_LIMIT
                for folders in logs for count, size in folders)),
    ]


def figure_rows(teams: list[Team]) -> list[list[object]]:
    """What happened, for scale: requests, uniques, runs, midnights, the budget, panels, the owner."""
    return [
        ["visitor answers", *[sum(team.served.kinds.values()) for team in teams]],
        ["uniques served", *[len(team.served.uniques) for team in teams]],
        ["a unique again to its own visitor (same_face_for)", *[team.served.same_face for team in teams]],
        ["answers 304", *[sum(n for key, n in team.served.kinds.items() if key.endswith(" 304"))
                          for team in teams]],
        ["visitors turned away by a slot down on purpose", *[team.served.excused for team in teams]],
        ["runs", *[len(team.watch.money.runs_seen) for team in teams]],
        ["midnights (the day's spend started again)", *[team.watch.money.midnights for team in teams]],
        ["billed s while no generator answered (restart, takeover)",
         *[fmt(team.watch.money.billed_unjudged, 1) for team in teams]],
        ["panels connected", *[team.panels.visits for team in teams]],
        ["owner actions", *[sum(team.owner.actions.values()) for team in teams]],
        ["images deleted by the owner", *[len(team.served.deleted) for team in teams]],
    ]


def details(teams: list[Team]) -> None:
    """The first few of each problem, on stderr, to start from."""
    for team in teams:
        s, m = team.served, team.watch.money
        for name, items in (("unique twice", s.uniques_twice), ("held served", s.held_served),
                            ("deleted served", s.deleted_served), ("5xx", s.server_errors),
                            ("unanswered", s.failures), ("over budget", m.auto_runs_over_budget),
                            ("fault not done", team.schedule.errors)):
            for item in items[:5]:
                print(f"{team.setup.name}: {name}: {item}", file=sys.stderr)
        if m.highest_day_share > 1.0 and m.highest_day_at is not None:
            print(f"{team.setup.name}: day's spend at {m.highest_day_share:.3f} of the budget at "
                  f"{time.strftime('%H:%M:%S', time.gmtime(m.highest_day_at))} UTC; faults on that day until then: "
                  f"{faults_before(team, m.highest_day_at) or 'none'}", file=sys.stderr)
        print(f"{team.setup.name}: requests {dict(s.kinds)}; owner {dict(team.owner.actions)}", file=sys.stderr)


def faults_before(team: Team, at: float) -> str:
    """The faults on during the (compressed) day up to `at`: what the spend over the budget may come from."""
    since = at // team.watch.day_seconds * team.watch.day_seconds  # the day began (days count from the epoch)
    return ", ".join(f"{strike.fault} ({strike.start - at:+.0f} s to {strike.end - at:+.0f} s)"
                     for strike in team.schedule.strikes if strike.start <= at and strike.end >= since)


def simulator(work: Path, api: str) -> Simulator:
    """The simulated GPU of one setup: a quick machine, priced at 1 a second by its API too."""
    return Simulator(work / f"simulator-{api}.log", boot_delay="300ms", stop_delay="200ms", sd_boot_delay="100ms",
                     step_time="10ms", api=api, hourly_price=MACHINE_PRICE)


CRASHES: list[str] = []  # the soak's own threads that died: its figures are then incomplete


def record_crash(crash: threading.ExceptHookArgs) -> None:
    """Keep a thread's death for the verdict, and print its traceback as Python would."""
    CRASHES.append(f"{crash.thread.name if crash.thread else '?'}: {crash.exc_type.__name__}: {crash.exc_value}")
    threading.__excepthook__(crash)


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    threading.excepthook = record_crash
    seconds = QUICK_SECONDS if args.quick else args.minutes * 60
    day = QUICK_DAY if args.quick else FULL_DAY
    layer = config_layer(day, budget_share=QUICK_BUDGET_SHARE if args.quick else BUDGET_SHARE)
    print_machine()
    stop = threading.Event()
    with Receiver() as receiver, scratch() as work, contextlib.ExitStack() as simulators:
        sims = {api: simulators.enter_context(simulator(work, api)) for api in ("paperspace", "runpod")}
        with files_setup(work, sims["paperspace"], layer, receiver, day) as files, \
                redis_setup(work, sims["runpod"], layer, receiver, day) as replicated:
            setups = [files, replicated]
            most = max(len(Schedule(setup, stop, on=0, gap=0, first_after=0).faults) for setup in setups)
            # Each fault takes a little longer than its slot (a restart, Redis starting): a margin of 20%.
            slot = min(FAULT_CYCLE, (seconds - FIRST_FAULT_AFTER) * 0.8) / most
            on, gap = 0.6 * slot, 0.4 * slot
            teams = []
            for n, setup in enumerate(setups):
                served = Served(set(setup.held))
                teams.append(Team(setup, served, Visitors(setup, served, stop, seed=n + 1),
                                  Panels(setup, stop, seed=n + 11), Owner(setup, served, stop, seed=n + 21),
                                  Watch(setup, stop, day),
                                  Schedule(setup, stop, on=on, gap=gap, first_after=FIRST_FAULT_AFTER)))
            resources = Resources(setups, stop, every=2.0 if args.quick else 10.0)
            threads = [resources.thread, *(thread for team in teams for thread in team.threads())]
            started = time.time()
            for thread in threads:
                thread.start()
            print(f"soak: running, {seconds / 60:g} min", file=sys.stderr, flush=True)
            try:
                while not stop.wait(min(30.0, seconds / 10)):
                    elapsed = time.time() - started
                    print(f"soak: {elapsed / 60:.1f} of {seconds / 60:.1f} min", file=sys.stderr, flush=True)
                    if elapsed >= seconds:
                        stop.set()
            finally:  # Ctrl-C or a kill: the threads stop before the servers they talk to
                stop.set()
            for thread in threads:
                thread.join(60)
            faults, noticing = fault_rows(teams, gap, receiver)
        machines = [sims[setup.api].machine()["state"] for setup in setups]  # the servers have stopped
    details(teams)
    names = [team.setup.name if team.setup.redis is None else f"{team.setup.name} (2 replicas)" for team in teams]
    invariants = invariant_rows(teams, machines, resources.largest_log, noticing, args.quick)
    print_table("Soak: invariants", ["invariant", *names, "holds"], invariants, [
        f"{seconds / 60:g} minutes; a day is {day:g} s (AVATARGEN_DAY_SECONDS); the machine costs 1 a second, "
        f"the daily budget is {layer['gpu']['daily_budget']}; checks every 2 s; a fault every {on + gap:.0f} s "
        f"({on:.0f} s on)",
        *([files.disk_note] if files.disk_note else []),
    ])
    print_table("Soak: what happened", ["figure", *names], figure_rows(teams))
    print_table("Soak: faults", ["setup", "fault", "times", "simulator hits", "met something", "in the status",
                                 "in the log", "notified"], faults, [
        "met something: a simulator fault that struck (a run was on); a full disk while a run was on; a replica "
        "frozen or killed while it held the generator; the other faults always",
    ])
    floor = seconds / 4 if args.quick else min(LIFE_FLOOR, seconds / 4)
    growth = resources.growth(args.quick, floor)
    window = "first quarter" if args.quick else "first ten minutes (at most half)"
    print_table("Soak: resources", ["process (role)", "measure", f"{window}, longest life", "last quarter", "growth",
                                    "samples", "lives judged", "worst growth of a life", "holds"], [
        [row.process, row.measure, fmt(row.verdict.first, 1), fmt(row.verdict.last, 1),
         f"{row.verdict.growth * 100:+.1f}%", row.verdict.samples, row.lives, f"{row.worst * 100:+.1f}%",
         "not judged with --quick" if args.quick else yes(row.holds)]
        for row in growth], [
        f"highest value in each window of each life (a process between restarts; a replica's life as the "
        f"generator begins when it first takes it over) that lasted {floor / 60:.1f} minutes at least; the "
        f"figures are the longest life's; holds: every life judged grew by less than {GROWTH_LIMIT:.0%} (a count "
        f"may grow by 1). Never restarted: the first replica and Redis's keys",
    ])
    # Two minutes reach no steady state (visitor windows, Redis keys and caches still filling): resources are
    # judged by full runs only.
    broken = [row[0] for row in invariants if row[-1] == "NO"]
    broken += [f"{row.process} {row.measure}" for row in growth if not row.holds and not args.quick]
    broken += [f"the soak's thread {crash}" for crash in CRASHES]
    if broken:
        print(f"does not hold: {', '.join(str(item) for item in broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
