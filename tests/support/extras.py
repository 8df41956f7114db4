"""Importing the trainer as a user without an optional extra installed.

Why this exists: each framework integration (Hugging Face, Lightning) must leave the trainer
importable without its framework, and name the extra to install when the integration itself
is imported. Both tests check that the same way: a fresh interpreter where the framework's
module is blocked (``sys.modules[name] = None``, as if not installed).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def import_without(
    blocked: str, imports: Sequence[str], integration: str
) -> subprocess.CompletedProcess[str]:
    """In a fresh interpreter with ``blocked`` not importable: import ``imports`` (must
    succeed), then ``integration``; its stdout is what the ImportError said."""
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None  # as if not installed\n"
        f"import {', '.join(imports)}\n"
        "try:\n"
        f"    import {integration}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
