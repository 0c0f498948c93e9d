"""The soak: a month unattended, in minutes. avatargen runs as its owner runs it, with time compressed,
steady traffic and a fault on a schedule, while every invariant is checked continuously; a table at the end.

Two setups run side by side, each with a simulated GPU of its own (a process: the machine outlives any
server): `files` (one `avatargen serve`, the Paperspace API, its data folder on a tmpfs so the disk can
fill) and `redis` (two replicas sharing one redis-server, the RunPod API). Time is compressed: checks every
2 s, short visitor windows, fallback retirement every few seconds, and a "day" of `DAY_SECONDS`
(`AVATARGEN_DAY_SECONDS`, read by the one place that decides "today"), so daily budgets run out and reset
many times.

    python -m benchmarks.soak [--minutes N] [--quick]

Modules: `setups` (the processes), `traffic` (visitors, panels, the owner), `watch` (status and the
simulator's bill, sampled), `faults` (the schedule), `resources` (RSS, fds, threads, listeners, Redis keys,
the log), `__main__` (the run and the tables). Notifications go to `avatargen.testing.Receiver`, the json://
webhook the tests use too.
"""
