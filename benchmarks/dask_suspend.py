"""Does a local Dask cluster survive a suspension (Ctrl-Z) of several minutes? (issue 25)

Starts ``map_cases`` on a local cluster of 2 workers in a child process (its own process
group, as a shell job), lets the tasks start, stops the whole group with SIGSTOP for
``--stop`` seconds (Dask's default worker time-to-live is 5 minutes), continues it with
SIGCONT and waits up to ``--wait`` seconds for the batch to finish. Prints one line:
whether every task finished, the seconds after SIGCONT, and how many worker tracebacks
the child printed.

With ``--workers-only`` only the worker processes are stopped and the scheduler keeps
running: what a low-priority job on a busy machine sees after a suspension, when the
scheduler wakes before its starved workers manage to send a heartbeat.

Measured once on a shared 2-core machine (6 tasks of 20 s on 2 workers), before (the
code with Dask's default 5-minute time-to-live) and after (no time-to-live, worker watch):

- ``--stop 360``: before and after, the batch finished 80 s after SIGCONT, 0 tracebacks;
- ``--stop 360 --workers-only``: before and after, finished 72 s after SIGCONT.

So the hang of issue 25 (0 workers, no progress for 5 minutes) was not reproduced here;
the time-to-live is off and the zero-worker watch is tested as a unit instead.

Run with the lesionuq to measure on ``PYTHONPATH``::

    PYTHONPATH=src python benchmarks/dask_suspend.py --stop 360
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

CHILD = """
import time
from lesionuq.parallel import map_cases

def slow(i):
    for _ in range(40):  # 20 s of work in small steps
        time.sleep(0.5)
    return i

if __name__ == "__main__":
    res = map_cases(slow, {f"scan{i}": i for i in range(6)}, workers=2, progress=False)
    print("RESULT", len(res.results), len(res.failed), flush=True)
"""


def _group(pgid: int, besides_leader: bool) -> list[int]:
    """Processes of the process group ``pgid`` (Linux ``/proc``), the leader last."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and int(entry) != pgid:  # field 5: process group
            members.append(int(entry))
    return members if besides_leader else [*members, pgid]


def main() -> None:
    """Measure once and print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop", type=float, default=360.0, help="seconds stopped")
    parser.add_argument("--start", type=float, default=15.0, help="seconds before SIGSTOP")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait after")
    parser.add_argument(
        "--workers-only", action="store_true", help="stop the workers, not the scheduler"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "child.py")
        with open(script, "w") as f:
            f.write(CHILD)
        log = open(os.path.join(tmp, "log.txt"), "w+")
        proc = subprocess.Popen(
            [sys.executable, script], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        time.sleep(args.start)
        stopped = _group(proc.pid, besides_leader=args.workers_only)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(args.stop)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        t0 = time.monotonic()
        try:
            proc.wait(timeout=args.wait)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        seconds = time.monotonic() - t0
        log.seek(0)
        text = log.read()
    result = [line for line in text.splitlines() if line.startswith("RESULT")]
    print(
        f"stopped {'workers' if args.workers_only else 'all'} {args.stop:.0f} s: "
        f"exited={finished} after {seconds:.1f} s; "
        f"{result[0] if result else 'no RESULT line'}; "
        f"tracebacks in its log: {text.count('Traceback')}"
    )


if __name__ == "__main__":
    main()
