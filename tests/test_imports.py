"""Imports sit at the top of modules; a lazy one says why, and the CLI starts light."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import lesionuq

SRC = Path(lesionuq.__file__).parent
LAZY = "# lazy:"
#: What ``lesionuq --help`` must not load (seconds of start-up between them).
HEAVY = (
    "torch",
    "torch_geometric",
    "SimpleITK",
    "dask",
    "distributed",
    "nilearn",
    "matplotlib",
)


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _body_imports(node: ast.AST, in_function: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The imports inside function bodies under ``node``, not under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    children = list(ast.iter_child_nodes(node))
    while children:
        child = children.pop(0)
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            children[:0] = child.orelse  # only the ``else:`` branch runs
            continue
        if in_function and isinstance(child, ast.Import | ast.ImportFrom):
            found.append(child)
        inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        found += _body_imports(child, inner)
    return found


def uncommented_body_imports(source: str, name: str) -> list[str]:
    """``name:line`` of each function-body import without a ``# lazy:`` comment.

    The comment counts on the import's own lines, or as the comment just above it (the
    comment lines directly above the import, of which one starts with ``# lazy:``).

    Args:
        source: A module's text.
        name: The module's name in the messages (its path).

    Returns:
        One ``name:line: statement`` per offending import, in line order.
    """
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
    lines = source.splitlines()
    out = []
    for imp in sorted(_body_imports(ast.parse(source)), key=lambda n: n.lineno):
        span = list(range(imp.lineno, (imp.end_lineno or imp.lineno) + 1))
        above = imp.lineno - 1  # comment-only lines directly above (1-based line numbers)
        while above >= 1 and lines[above - 1].lstrip().startswith("#"):
            span.append(above)
            above -= 1
        if not any(comments.get(i, "").startswith(LAZY) for i in span):
            out.append(f"{name}:{imp.lineno}: {lines[imp.lineno - 1].strip()}")
    return out


def test_every_function_body_import_says_why_it_is_lazy():
    """Imports go at the top of the module; a lazy one carries ``# lazy: <why>``."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        bad += uncommented_body_imports(path.read_text(), str(path.relative_to(SRC.parent)))
    assert not bad, (
        "imports inside function bodies without a `# lazy: <why>` comment on their line or "
        "the line above (move them to the top of the module):\n" + "\n".join(bad)
    )


def test_the_check_finds_an_uncommented_body_import_and_accepts_the_others():
    source = (
        "from __future__ import annotations\n"
        "import json\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import numpy\n"
        "def f():\n"
        "    import os\n"  # line 7: uncommented
        "    # lazy: torch is not loaded for lesionuq --help\n"
        "    import torch\n"
        "    # lazy: a reason on two lines,\n"
        "    # the second one just above\n"
        "    import math\n"
        "    from pathlib import Path  # lazy: on its own line\n"
        "    from collections import (  # lazy: a parenthesised import\n"
        "        OrderedDict,\n"
        "    )\n"
        "    if TYPE_CHECKING:\n"
        "        import numpy\n"
        "    else:\n"
        "        import re\n"  # line 20: runs, uncommented
        "    def g():\n"
        "        from shutil import copy\n"  # line 22: nested function, uncommented
        "    x = '# lazy: not a comment'; import sys\n"  # line 23: a string is no comment
        "class C:\n"
        "    def m(self):\n"
        "        import csv  # lazy: a method\n"
        "        import glob  # no reason\n"  # line 27
    )
    found = uncommented_body_imports(source, "m.py")
    assert [line.split(":")[1] for line in found] == ["7", "20", "22", "23", "27"], found
    assert found[0] == "m.py:7: import os"


def test_importing_the_cli_loads_no_heavy_dependency():
    """``lesionuq --help`` starts without torch, PyG, SimpleITK, Dask, nilearn, matplotlib."""
    code = (
        "import sys\n"
        "import lesionuq.cli\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "try:\n"
        "    lesionuq.cli.app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[]", f"import lesionuq.cli loads {lines[0]}"
    assert "Usage" in out.stdout
    assert lines[-1] == "[]", f"lesionuq --help loads {lines[-1]}"
