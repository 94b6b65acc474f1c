"""``python -m lesionuq`` (and ``torchrun -m lesionuq``): the command-line interface."""

from __future__ import annotations

from lesionuq.cli import app

if __name__ == "__main__":
    app(prog_name="lesionuq")
