"""No module in DriveStateMonitor/ imports anything outside that folder but the standard library, so
the folder copied alone runs anywhere."""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
import sysconfig
from typing import Iterator, List, Tuple

import pytest

from dsm_harness import PACKAGE

MODULES = sorted(name for name in os.listdir(PACKAGE) if name.endswith(".py"))
LOCAL = {name[:-3] for name in MODULES}


def _stdlib_by_location(name: str) -> bool:
    """Fallback before Python 3.10: a top-level module is stdlib if it is built in or lives in the
    interpreter's own library directory (not site-packages)."""
    if name in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    origin = spec.origin or (list(spec.submodule_search_locations or [""])[0])
    origin = os.path.realpath(origin)
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    platstdlib = os.path.realpath(sysconfig.get_paths()["platstdlib"])
    if "site-packages" in origin or "dist-packages" in origin:
        return False
    return any(origin.startswith(root + os.sep) for root in (stdlib, platstdlib)) or \
        os.path.basename(os.path.dirname(origin)) == "lib-dynload"


def is_stdlib(name: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return name in names or name == "__future__"
    return _stdlib_by_location(name)


def imports(path: str) -> Iterator[Tuple[int, int, str]]:
    """(line, level, module) for every import statement and literal __import__/import_module call."""
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, 0, alias.name
        elif isinstance(node, ast.ImportFrom):
            # `from . import x` imports from the package itself (x: a submodule or a name of
            # __init__.py): module "" at that level.
            yield node.lineno, node.level, node.module or ""
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield node.lineno, 0, arg.value


def violations(path: str) -> List[str]:
    found = []
    for line, level, module in imports(path):
        top = module.split(".")[0]
        where = "%s:%d" % (os.path.basename(path), line)
        if level == 0:
            if not is_stdlib(top):
                found.append("%s imports %r, which is not in the standard library" % (where, module))
        elif level > 1:
            found.append("%s imports %r from %d levels up, outside DriveStateMonitor/"
                         % (where, module, level))
        elif top and top not in LOCAL:
            found.append("%s imports .%s, which is not a module of DriveStateMonitor/"
                         % (where, module))
    return found


def test_the_package_has_modules():
    assert "DriveStateMonitor.py" in MODULES and "daemon.py" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_only_stdlib_and_its_own_folder(module):
    assert violations(os.path.join(PACKAGE, module)) == []


def test_the_rule_catches_outside_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport pytest\nfrom ..tests import dsm_harness\n"
                   "from .nosuchmodule import x\nfrom . import daemon\n"
                   "__import__('dsm_harness')\n")
    found = sorted(violations(str(bad)))
    assert len(found) == 4, found
    assert any("'pytest'" in v and ":2 " in v for v in found), found
    assert any("'tests'" in v and "2 levels up" in v for v in found), found
    assert any(".nosuchmodule," in v for v in found), found
    assert any("'dsm_harness'" in v and ":6 " in v for v in found), found


@pytest.mark.skipif(not hasattr(sys, "stdlib_module_names"), reason="needs Python 3.10+")
def test_the_fallback_agrees_with_stdlib_module_names():
    for name in ("os", "json", "selectors", "fcntl", "_socket", "pytest"):
        assert _stdlib_by_location(name) == (name in sys.stdlib_module_names), name
