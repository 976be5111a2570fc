"""The public names: each loads lazily, is documented, and is what type checkers see."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import ckptsurgeon


def _type_checking_names() -> dict[str, str]:
    """name -> module, as the ``if TYPE_CHECKING:`` block of the package imports them."""
    tree = ast.parse(Path(ckptsurgeon.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    names = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            assert alias.asname == alias.name   # `import X as X`: re-exported for strict type checkers
            names[alias.name] = node.module or ""
    return names


def test_type_checkers_see_every_lazy_name_from_its_module() -> None:
    assert _type_checking_names() == ckptsurgeon._PUBLIC


def test_every_exported_name_loads_and_callables_are_documented() -> None:
    undocumented = []
    for name in ckptsurgeon.__all__:
        value = getattr(ckptsurgeon, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        doc = (value.__doc__ or "").strip()
        if not doc or doc.startswith(f"{value.__name__}("):   # dataclasses and NamedTuples write their signature
            undocumented.append(name)
    assert undocumented == []
