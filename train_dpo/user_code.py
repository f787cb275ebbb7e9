"""The source code a divergence of one's own runs, hashed, so that a run is retrained when any of it changes.

f'`s values on a grid (`divergences.values_sha256`) catch a change of what the function returns, but not
of its gradient: a helper's custom `torch.autograd.Function.backward` can change sign and leave every
value the same. So the fingerprint also hashes source:

- of the function itself and of every function, class and constant of its module that it refers to by
  name, transitively (adding another divergence to the same module changes none of these, so its runs
  are kept);
- of every module it imports from outside the installed libraries and the standard library, at any depth,
  in whole (a helper module, and the module that helper imports).

Imports are read from the source (`ast`), not executed: `modulefinder` would also walk torch and the rest
of the installed libraries, file by file. An import made by a string at run time (`importlib`) is not
seen; such a helper's values are still covered by f'`s values.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
import sysconfig
import types
from pathlib import Path

import config

# Where installed code lives: what is there is versioned by its package, not hashed here.
LIBRARY_ROOTS = tuple(
    Path(path).resolve()
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (path := sysconfig.get_paths().get(key))
)
# The project's own packages: a change to them is a change of the project, covered by its version.
PROJECT_ROOTS = tuple(config.REPO_ROOT / name for name in ("common", "train_dpo", "dataset", "config.py"))


def is_user_file(path: str | None) -> bool:
    """A source file that is the user's own: not installed, not the standard library, not the project's."""
    if not path or not path.endswith(".py"):
        return False
    resolved = Path(path).resolve()
    return not any(resolved.is_relative_to(root) for root in (*LIBRARY_ROOTS, *PROJECT_ROOTS))


def imported_user_modules(module_file: str, package: str | None) -> dict[str, str]:
    """{file: SHA-256} of the user's modules that `module_file` imports, transitively (itself excluded)."""
    found: dict[str, str] = {}
    pending = [(module_file, package)]
    seen = {str(Path(module_file).resolve())}
    while pending:
        source_file, source_package = pending.pop()
        for name in imported_names(Path(source_file).read_text(encoding="utf-8"), source_package):
            origin, child_package = locate(name)
            if not is_user_file(origin) or str(Path(origin).resolve()) in seen:
                continue
            seen.add(str(Path(origin).resolve()))
            found[str(Path(origin).resolve())] = hashlib.sha256(Path(origin).read_bytes()).hexdigest()
            pending.append((origin, child_package))
    return found


def imported_names(source: str, package: str | None) -> list[str]:
    """The absolute names of the modules a source imports (for `from a import b`, both `a` and `a.b`)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if not package:
                    continue
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return [name for name in names if name]


def locate(name: str) -> tuple[str | None, str | None]:
    """(source file, package) of an importable module, or (None, None): found without importing it when
    it is not imported yet (a parent package may still be imported to search its path)."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None), getattr(module, "__package__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None, None
    if spec is None or not spec.has_location:
        return None, None
    package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
    return spec.origin, package or None


def referenced_source(function: types.FunctionType) -> list[str]:
    """The source of `function` and of every name of its module it refers to, transitively: functions and
    classes by their source, other values by their repr."""
    module_globals = function.__globals__
    parts, seen, pending = [], set(), [function]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        try:
            parts.append(inspect.getsource(item))
        except (OSError, TypeError):
            parts.append(repr(item))
            continue
        for name in sorted(referenced_names(item)):
            value = module_globals.get(name)
            if isinstance(value, types.FunctionType | type) and inspect.getmodule(value) is inspect.getmodule(
                function
            ):
                pending.append(value)
            elif name in module_globals and not isinstance(
                value, types.ModuleType | types.FunctionType | type
            ):
                parts.append(f"{name} = {value!r}")
    return parts


def referenced_names(item: object) -> set[str]:
    """The global names a function's code (or a class's methods' code) reads, nested code included."""
    if isinstance(item, types.FunctionType):
        codes = [item.__code__]
    else:  # a class: its methods, static and class methods included
        members = [getattr(member, "__func__", member) for member in vars(item).values()]
        codes = [member.__code__ for member in members if isinstance(member, types.FunctionType)]
    names: set[str] = set()
    while codes:
        code = codes.pop()
        names |= set(code.co_names)
        codes += [const for const in code.co_consts if isinstance(const, types.CodeType)]
    return names


def divergence_source_sha256(spec: str) -> str:
    """SHA-256 of the code a `module:attribute` divergence runs (this module's docstring says what)."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    found = getattr(module, attribute)
    target = getattr(found, "f_prime", found)  # a Divergence: its f'; a function: itself
    digest = hashlib.sha256()
    if isinstance(target, types.FunctionType) and getattr(module, "__file__", None):
        digest.update(repr((attribute, getattr(found, "name", attribute))).encode())
        for part in referenced_source(target):
            digest.update(part.encode())
    elif getattr(module, "__file__", None):  # not a plain function: the whole module stands for it
        digest.update(Path(module.__file__).read_bytes())
    if getattr(module, "__file__", None):
        for path, sha in sorted(imported_user_modules(module.__file__, module.__package__).items()):
            digest.update(f"{Path(path).name}:{sha}".encode())
    return digest.hexdigest()
