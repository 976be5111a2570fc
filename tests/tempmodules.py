"""Importing test-written model code as a real module that can be made to vanish afterwards."""

from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def temporary_module(folder: Path, source: str) -> Iterator[Any]:
    """Import ``source`` as a uniquely named module from ``folder``; afterwards the module, its file and
    its sys.path entry are all gone, so nothing can import it again."""
    name = f"ckst_tmp_{uuid.uuid4().hex[:12]}"
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
        path.unlink()
        shutil.rmtree(folder / "__pycache__", ignore_errors=True)
