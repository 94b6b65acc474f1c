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
raises :class:`~lesionuq.errors.CasesFailedError` listing them. Tasks write their
outputs with the existing atomic writes and stamps, so rerunning the same command
redoes only the failed scans. Workers run torch single-threaded.

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
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from lesionuq.errors import CasesFailedError, InputError
from lesionuq.utils import make_progress

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["CaseResults", "check_parallel", "map_cases"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")

#: Seconds to wait for a ``--scheduler`` to answer before giving up.
CONNECT_TIMEOUT = 10
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
    from distributed import as_completed  # the optional lesionuq[cluster] extra

    run = uuid.uuid4().hex[:8]
    with _client(scheduler, workers) as client:
        futures = {
            client.submit(_task, fn, item, key=f"lesionuq-{key}-{run}", pure=False): key
            for key, item in items.items()
        }
        for future in as_completed(futures):
            key = futures[future]
            if future.status == "finished":
                try:
                    done[key] = future.result()
                except Exception as exc:  # the result could not be sent back
                    failed[key] = _describe(exc)
            else:
                failed[key] = _describe(future.exception())
            future.release()
            advance(key)


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the given scheduler, or of a new ``LocalCluster`` of ``workers``."""
    from distributed import Client, LocalCluster  # the optional lesionuq[cluster] extra

    if scheduler is not None:
        try:
            client = Client(str(scheduler).strip(), timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({exc})."
            ) from None
        with client:
            yield client
        return
    with _glibc_malloc_defaults():
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        with cluster, Client(cluster) as client:
            yield client


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
    import dask  # the optional lesionuq[cluster] extra

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


def _task(fn: Callable[[ItemT], T], item: ItemT) -> T:
    """Run one scan's task on a worker: torch single-threaded, then ``fn(item)``."""
    _single_threaded()
    return fn(item)


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
