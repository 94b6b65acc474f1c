"""Small shared helpers: device choice, progress bars, and user text that any writer can show."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = [
    "PLAIN",
    "make_progress",
    "plain_text",
    "remove_pyg_codegen_files",
    "resolve_device",
    "track",
]

T = TypeVar("T")


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``"auto"`` / ``"cpu"`` / ``"cuda"`` to a device; ``auto`` prefers CUDA.

    Raises:
        ValueError: ``"cuda"`` was asked for but is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available.")
    return device


def make_progress(transient: bool = False) -> Progress:
    """A Rich progress bar with count, elapsed and remaining time."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=transient,
    )


def track(
    items: Iterable[T], description: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Iterate with a progress bar (no bar when ``enabled`` is False)."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total, info="")
        for item in items:
            yield item
            progress.advance(task)


def remove_pyg_codegen_files() -> list[Path]:
    """Delete the modules PyTorch Geometric generated in the system temp folder.

    ``torch_geometric.template.module_from_template`` renders a jinja template per layer
    class (e.g. ``..._GCNConv_propagate_XXXX.py``) into ``tempfile.gettempdir()`` with
    ``delete=False`` and imports it once per process; the file is never removed, so every
    run left one behind. The module is already imported when this is called, so its file
    is no longer needed.

    Returns:
        The files removed.
    """
    tmp = Path(tempfile.gettempdir()).resolve()
    removed = []
    for name, module in list(sys.modules.items()):
        # named after the layer class's module: torch_geometric.nn.conv... for PyG's own,
        # lesionuq.scorers.nn.conv_SymmetricGCNConv_propagate for a subclass of ours
        if not name.endswith(("_propagate", "_edge_updater")):
            continue
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file)
        if path.parent.resolve() == tmp and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block's torch operators on ``n`` intra-op CPU threads, then restore the count.

    Args:
        n: Threads inside the block; ``None`` leaves the count as it is.
    """
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def plain_text(value: object) -> str:
    r"""``str(value)`` that any UTF-8 writer and any figure can show as it is.

    A file name in another encoding (Latin-1 bytes, which Python holds as surrogate
    escapes such as ``\udce9``) is read as Latin-1, so ``café`` stays readable and
    writing a page or drawing a title cannot fail. Figures draw such text with
    :data:`PLAIN` (no mathtext), so ``$`` and ``{`` are shown as typed.
    """
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "".join(
                part.decode("latin-1") if isinstance(part, bytes) else part
                for part in _split_surrogates(text)
            )
    return text


def _split_surrogates(text: str) -> list[str | bytes]:
    """Runs of ordinary text, and the bytes that surrogate escapes stand for."""
    parts: list[str | bytes] = []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            byte = bytes([ord(ch) - 0xDC00])
            if parts and isinstance(parts[-1], bytes):
                parts[-1] += byte
            else:
                parts.append(byte)
        elif parts and isinstance(parts[-1], str):
            parts[-1] += ch
        else:
            parts.append(ch)
    return parts


#: Keyword arguments of a matplotlib text that shows user text literally (no mathtext).
PLAIN = {"parse_math": False}
