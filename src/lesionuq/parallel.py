"""One task per scan, in this process or on a Dask cluster: :func:`map_cases`.

Every per-scan stage (``predict --cases``, the experiment's ``preprocess``, ``sample``
and ``graphs``) hands its scans to :func:`map_cases`:

- by default a plain loop in this process (Dask is not even imported);
- ``workers=N``: a ``distributed.LocalCluster`` of N single-threaded worker processes
  on this machine, closed at the end;
- ``scheduler="tcp://host:8786"``: an existing ``dask.distributed`` scheduler (a
  workstation, or a SLURM / PBS cluster started with ``dask-jobqueue``).

Each scan is one task; results come back as they complete (``as_completed``) behind a
progress bar. A scan whose task fails (an exception, or its worker process dying) is
recorded by id with the error's text while the other scans finish; the caller then
raises :class:`~lesionuq.errors.CasesFailedError` listing them. A task's exception is
caught on its worker and sent back as text, so no worker traceback is printed before
that one-sentence summary. Tasks write their outputs with the existing atomic writes
and stamps, so rerunning the same command redoes only the failed scans. Workers run
torch single-threaded.

A local cluster has at most one worker per CPU core (more are capped, with one
sentence: each worker is a process with its own copy of the model and the scans). Its
scheduler has no worker time-to-live, so a cluster suspended for minutes (Ctrl-Z, a
busy machine) keeps its workers; should it still lose every worker for
:data:`WORKERLESS_GRACE` seconds, the scans left are reported failed instead of waiting
for ever.

Example:
    >>> res = map_cases(str.upper, {"a": "x", "b": "y"}, progress=False)
    >>> res.results
    {'a': 'X', 'b': 'Y'}
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from lesionuq.errors import CasesFailedError, InputError
from lesionuq.utils import make_progress

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["CaseResults", "check_parallel", "check_scheduler", "local_workers", "map_cases"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")

#: Seconds to wait for a ``--scheduler`` to answer before giving up.
CONNECT_TIMEOUT = 10
#: Seconds a local cluster may have no worker at all before its scans are failed.
WORKERLESS_GRACE = 120.0
#: Seconds between two looks at a local cluster's workers while waiting for results.
_POLL = 5.0
_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?[^\s/:]+(?::\d+)?/?$", re.IGNORECASE)


@dataclass
class CaseResults(Generic[T]):
    """What :func:`map_cases` gathered.

    Attributes:
        results: The result of every scan that finished, by id, in the order of the
            items given (not the order of completion).
        failed: The error text of every scan that failed, by id, in the items' order.
    """

    results: dict[str, T] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def raise_failed(self, what: str = "scan") -> None:
        """Raise :class:`CasesFailedError` naming the failed ids (nothing when none failed).

        Args:
            what: What one item is, for the message (``"scan"``, ``"case"``).
        """
        if self.failed:
            raise CasesFailedError(self.failed, len(self.failed) + len(self.results), what)


def check_parallel(scheduler: str | None, workers: int | None) -> None:
    """Check the parallel options before any work (see :func:`map_cases`).

    Raises:
        InputError: Both given, ``workers`` below 1, or an address that is not one.
    """
    if scheduler is not None and workers is not None:
        raise InputError(
            "give either --scheduler ADDRESS (an existing Dask scheduler) or --workers N "
            "(a local cluster), not both."
        )
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers):
        raise InputError(f"--workers must be a whole number, got {workers!r}.")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.")
    if scheduler is not None and not _ADDRESS.match(str(scheduler).strip()):
        raise InputError(
            f"--scheduler {scheduler!r} is not a Dask scheduler address "
            "(expected e.g. tcp://10.0.0.5:8786)."
        )


def check_scheduler(scheduler: str | None) -> None:
    """Connect to ``scheduler`` once, before anything is written (nothing when None).

    Raises:
        InputError: The scheduler cannot be reached (one sentence).
    """
    if scheduler is None:
        return
    with _connect(scheduler):
        pass


def _cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_CAPPED: set[tuple[int, int]] = set()  # (asked, cores) already told about


def local_workers(workers: int, cpus: int | None = None) -> int:
    """The number of local worker processes: ``workers``, at most one per CPU core.

    A larger number is capped, with one sentence (logged once per process): each
    worker is a process with its own memory, so 999 workers would exhaust the machine.

    Args:
        workers: The number asked for (``--workers``).
        cpus: Cores to allow (default: those this process may run on).

    Returns:
        ``min(workers, cpus)``.
    """
    cpus = _cpu_count() if cpus is None else cpus
    if workers <= cpus:
        return workers
    if (workers, cpus) not in _CAPPED:
        _CAPPED.add((workers, cpus))
        logger.warning(
            "--workers %d is more than the %d CPU core(s) of this machine; using %d worker "
            "processes.",
            workers,
            cpus,
            cpus,
        )
    return cpus


def map_cases(
    fn: Callable[[ItemT], T],
    items: Mapping[str, ItemT],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "scans",
) -> CaseResults[T]:
    """Apply ``fn`` to every item, one task per item, and gather the results by id.

    Args:
        fn: The task: a module-level function (Dask sends it to the workers by name, so
            they must be able to import it); it writes its own outputs atomically.
        items: The task argument of each scan, by id (ids name the scans in messages).
            With Dask the arguments are pickled to the workers: keep them small (paths,
            settings), not volumes or models.
        scheduler: Address of a running ``dask.distributed`` scheduler.
        workers: Number of worker processes of a ``LocalCluster`` on this machine.
        progress: Show a progress bar over the scans.
        desc: Title of the progress bar.

    Returns:
        The results and the failures by id (call :meth:`CaseResults.raise_failed`).

    Raises:
        InputError: Bad ``scheduler`` / ``workers`` (:func:`check_parallel`), or a
            scheduler that cannot be reached.
    """
    check_parallel(scheduler, workers)
    gathered: CaseResults[T] = CaseResults()
    if not items:
        return gathered
    done: dict[str, T] = {}
    failed: dict[str, str] = {}
    with _bar(desc, len(items), progress) as advance:
        if scheduler is None and workers is None:
            for key, item in items.items():
                try:
                    done[key] = fn(item)
                except Exception as exc:  # recorded; KeyboardInterrupt still stops the loop
                    logger.debug("%s failed", key, exc_info=True)
                    failed[key] = _describe(exc)
                advance(key)
        else:
            _map_dask(fn, items, scheduler, workers, done, failed, advance)
    gathered.results = {k: done[k] for k in items if k in done}
    gathered.failed = {k: failed[k] for k in items if k in failed}
    return gathered


def _map_dask(
    fn: Callable[[ItemT], T],
    items: Mapping[str, ItemT],
    scheduler: str | None,
    workers: int | None,
    done: dict[str, T],
    failed: dict[str, str],
    advance: Callable[[str], None],
) -> None:
    # lazy: the optional lesionuq[cluster] extra, loaded only for --workers/--scheduler
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    watch = _WorkerWatch(WORKERLESS_GRACE) if scheduler is None else None
    with _client(scheduler, workers) as client:
        futures = {
            client.submit(_task, fn, item, key=f"lesionuq-{key}-{run}", pure=False): key
            for key, item in items.items()
        }
        completed = as_completed(futures)
        next_look = time.monotonic() + _POLL
        while not completed.is_empty():
            batch = completed.next_batch(block=False)
            for future in batch:
                key = futures[future]
                _gather_one(future, key, done, failed)
                future.release()
                advance(key)
            if not batch:
                time.sleep(0.05)
            if watch is None or time.monotonic() < next_look:
                continue
            next_look = time.monotonic() + _POLL
            n_workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            if watch.lost(n_workers, time.monotonic()):
                for future, key in futures.items():
                    if key not in done and key not in failed:
                        failed[key] = watch.sentence()
                        future.release()
                return


def _gather_one(future: Any, key: str, done: dict[str, Any], failed: dict[str, str]) -> None:
    """Record one finished future: its result, or its error's text."""
    if future.status != "finished":
        failed[key] = _describe(future.exception())
        return
    try:
        value = future.result()
    except Exception as exc:  # the result could not be sent back
        failed[key] = _describe(exc)
        return
    if isinstance(value, _Failure):
        failed[key] = value.text
    else:
        done[key] = value


@dataclass
class _WorkerWatch:
    """Tells when a local cluster has had no worker for ``grace`` seconds.

    Attributes:
        grace: Seconds without any worker that are tolerated (start-up, a restart).
        since: When the cluster was first seen without workers (None: it has some).
    """

    grace: float
    since: float | None = None

    def lost(self, n_workers: int, now: float) -> bool:
        """Whether the cluster has had no worker from ``since`` to ``now`` (seconds)."""
        if n_workers > 0:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.grace

    def sentence(self) -> str:
        """What each scan left is failed with."""
        return (
            f"the local Dask cluster had no worker left for {self.grace:.0f} s, so the scan "
            "was not run"
        )


@dataclass(frozen=True)
class _Failure:
    """A task's exception, as text, returned by :func:`_task` instead of raised."""

    text: str


@contextlib.contextmanager
def _connect(scheduler: str) -> Iterator[Client]:
    """A client of a running scheduler, or one sentence why it cannot be reached."""
    # lazy: the optional lesionuq[cluster] extra, loaded only for --workers/--scheduler
    from distributed import Client

    try:
        client = Client(str(scheduler).strip(), timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(
            f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({exc})."
        ) from None
    with client:
        yield client


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the given scheduler, or of a new ``LocalCluster`` of ``workers``.

    The local scheduler has no worker time-to-live (``distributed.scheduler.worker-ttl``
    None): its workers are its own child processes, watched by their nannies, and a
    time-to-live would only remove them after the whole process group was suspended.
    """
    # lazy: the optional lesionuq[cluster] extra, loaded only for --workers/--scheduler
    import dask

    # lazy: the optional lesionuq[cluster] extra, loaded only for --workers/--scheduler
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with _connect(scheduler) as client:
            yield client
        return
    n = local_workers(int(workers or 1))
    with _glibc_malloc_defaults(), dask.config.set({"distributed.scheduler.worker-ttl": None}):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        with cluster, Client(cluster) as client:
            client.run(_quiet_lost_heartbeat)
            yield client


HEARTBEAT_LOST = "Failed to communicate with scheduler during heartbeat."
"""What a Dask worker logs, with a traceback, when its heartbeat meets a closed scheduler."""


def _not_a_lost_heartbeat(record: logging.LogRecord) -> bool:
    """A logging filter: False for :data:`HEARTBEAT_LOST`, True for every other record."""
    return record.getMessage() != HEARTBEAT_LOST


def _quiet_lost_heartbeat() -> None:
    """In a worker of a local cluster: drop the traceback of a heartbeat that lost its scheduler.

    When a ``LocalCluster`` closes, a worker's heartbeat can reach the scheduler after it
    stopped; distributed then logs :data:`HEARTBEAT_LOST` with a full traceback at ERROR
    (dask/distributed#7105: intermittent, more often on a loaded machine), after a run
    that succeeded. The scheduler of a local cluster lives in the calling process, so a
    worker that loses it has nothing to tell the user. Every other record is kept, and a
    remote scheduler's workers are left alone.
    """
    logging.getLogger("distributed.worker").addFilter(_not_a_lost_heartbeat)


_TRIM = "MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def _glibc_malloc_defaults() -> Iterator[None]:
    """Start local Dask workers without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``.

    Any explicit value of that variable turns off glibc's dynamic mmap threshold, so every
    tensor above 128 KiB is mmap-ed and page-faulted afresh: a U-Net training step took
    1.75x as long in such a worker (``benchmarks/dask_env.py``). The Dask default is
    dropped from the workers' pre-spawn environment, and from this process's environment
    (which the workers inherit) while they start, where an earlier Dask cluster of this
    process left it; a value the user set to anything else is kept.
    """
    # lazy: the optional lesionuq[cluster] extra, loaded only for --workers/--scheduler
    import dask

    key = f"distributed.nanny.pre-spawn-environ.{_TRIM}"
    default = dask.config.get(key, None)
    inherited = os.environ.get(_TRIM)
    drop = inherited is not None and default is not None and inherited == str(default)
    if drop:
        del os.environ[_TRIM]
    try:
        with dask.config.set({key: None}):
            yield
    finally:
        if drop:
            os.environ[_TRIM] = str(inherited)


def _task(fn: Callable[[ItemT], T], item: ItemT) -> T | _Failure:
    """Run one scan's task on a worker: torch single-threaded, then ``fn(item)``.

    An exception is returned as a :class:`_Failure` (its text) rather than raised, so
    the worker does not log its traceback ("Compute Failed") over the terminal.
    """
    _single_threaded()
    try:
        return fn(item)
    except Exception as exc:
        logger.debug("task failed", exc_info=True)
        return _Failure(_describe(exc))


def _single_threaded() -> None:
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    name = type(exc).__name__
    if name == "KilledWorker":
        return "its worker process died (KilledWorker)"
    text = str(exc).strip().splitlines()
    return f"{name}: {text[0]}" if text else name


@contextlib.contextmanager
def _bar(desc: str, total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    if not enabled:
        yield lambda key: None
        return
    with make_progress() as bar:
        task = bar.add_task(desc, total=total, info="")

        def advance(key: str) -> None:
            bar.update(task, advance=1, info=key)

        yield advance
