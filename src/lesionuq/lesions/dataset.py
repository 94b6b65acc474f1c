"""A set of lesions: their table (one row each) and their graphs, kept aligned.

The scorers take a :class:`LesionSet`: baselines read the table's aggregate columns,
the GCNN reads the graphs. It is saved without pickling arbitrary objects: the table as
CSV and the graphs as a dict of plain tensors loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import Data

from lesionuq.io import InputError, atomic_torch_save, atomic_write_text, csv_text, read_csv_table

__all__ = ["LesionSet", "load_lesion_set"]

_TABLE = "lesions.csv"
_GRAPHS = "graphs.pt"


@dataclass
class LesionSet:
    """Lesions of one or more cases.

    Attributes:
        table: One row per lesion (see ``lesion_table`` for the columns); row ``i``
            describes ``graphs[i]``.
        graphs: One PyG ``Data`` per lesion with ``x`` (n_nodes, F) float32,
            ``edge_index`` (2, E) int64, ``y_iou`` (1,) float32, ``y_fp`` (1,) int64 and the
            metadata ``case_id``, ``lesion_id``, ``size``.
    """

    table: pd.DataFrame
    graphs: list[Data] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.table = self.table.reset_index(drop=True)
        if self.graphs and len(self.graphs) != len(self.table):
            raise ValueError(
                f"LesionSet: {len(self.graphs)} graphs for {len(self.table)} table rows."
            )

    def __len__(self) -> int:
        return len(self.table)

    @property
    def is_tp(self) -> np.ndarray:
        """(N,) bool: lesion is a true positive (IoU_adj >= epsilon)."""
        return self.table["is_tp"].to_numpy(dtype=bool)

    @property
    def sizes(self) -> np.ndarray:
        """(N,) int: lesion size in voxels (undilated)."""
        return self.table["n_voxels"].to_numpy(dtype=np.int64)

    def subset(self, index: Sequence[int] | np.ndarray) -> LesionSet:
        """The lesions at positions ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64)
        graphs = [self.graphs[i] for i in idx] if self.graphs else []
        return LesionSet(self.table.iloc[idx].reset_index(drop=True), graphs)

    @staticmethod
    def concat(sets: Sequence[LesionSet]) -> LesionSet:
        """Concatenate sets (tables stacked, graphs appended)."""
        tables = [s.table for s in sets if len(s.table)]
        table = pd.concat(tables, ignore_index=True) if tables else _empty_like(sets)
        graphs = [g for s in sets for g in s.graphs]
        return LesionSet(table, graphs)

    def save(self, folder: str | Path) -> None:
        """Write ``folder/lesions.csv`` and ``folder/graphs.pt`` (plain tensors only)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / _TABLE, csv_text(self.table))
        payload = {
            "x": [g.x for g in self.graphs],
            "edge_index": [g.edge_index for g in self.graphs],
            "y_iou": [g.y_iou for g in self.graphs],
            "y_fp": [g.y_fp for g in self.graphs],
            "lesion_id": torch.tensor([int(g.lesion_id) for g in self.graphs], dtype=torch.long),
            "size": torch.tensor([int(g["size"]) for g in self.graphs], dtype=torch.long),
        }
        atomic_torch_save(payload, folder / _GRAPHS)

    @classmethod
    def load(cls, folder: str | Path) -> LesionSet:
        """Read a set written by :meth:`save` (``weights_only=True``: no arbitrary pickle)."""
        folder = Path(folder)
        if not (folder / _TABLE).is_file():
            raise InputError(f"{folder / _TABLE}: file not found.")
        table = read_csv_table(folder / _TABLE)
        graphs: list[Data] = []
        if (folder / _GRAPHS).is_file():
            payload = torch.load(folder / _GRAPHS, weights_only=True)
            case_ids = table["case_id"].astype(str).tolist()
            for i in range(len(payload["x"])):
                graphs.append(
                    Data(
                        x=payload["x"][i],
                        edge_index=payload["edge_index"][i],
                        y_iou=payload["y_iou"][i],
                        y_fp=payload["y_fp"][i],
                        case_id=case_ids[i],
                        lesion_id=int(payload["lesion_id"][i]),
                        size=int(payload["size"][i]),
                    )
                )
        return cls(table, graphs)


def _empty_like(sets: Sequence[LesionSet]) -> pd.DataFrame:
    for s in sets:
        return s.table.iloc[0:0].copy()
    return pd.DataFrame()


def load_lesion_set(folder: str | Path) -> LesionSet:
    """:meth:`LesionSet.load`, read once per process while the folder's files are unchanged.

    The cache (two sets: a fold's validation and test lesions) serves tasks that refit on
    the same lesions (the fit stage's methods, the learning curve's subsamples) in one
    process or on a Dask worker. Callers must not modify the returned set.
    """
    folder = Path(folder).resolve()
    mtimes = tuple(f.stat().st_mtime_ns for f in sorted(folder.glob("*")) if f.is_file())
    return _load_once(folder, mtimes)


@functools.lru_cache(maxsize=2)
def _load_once(folder: Path, mtimes: tuple[int, ...]) -> LesionSet:
    del mtimes  # part of the cache key only
    return LesionSet.load(folder)
