"""Public MS lesion data sets as distributed, turned into a ``cases.csv`` manifest."""

from lesionuq.datasets.layouts import (
    LAYOUTS,
    build_manifest,
    isbi2015,
    mslub,
    msseg2016,
    shifts,
    wmh2017,
)

__all__ = [
    "LAYOUTS",
    "build_manifest",
    "isbi2015",
    "mslub",
    "msseg2016",
    "shifts",
    "wmh2017",
]
