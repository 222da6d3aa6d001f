"""Flatten the core modules a training run imports into one readable Python source (tooling).

Starting from the entry module (``pgolf.run``), every ``from pgolf.x import name`` is followed, at any
depth of the module, to collect the core modules the run needs. Modules are ordered so that each one
comes after the modules it imports at its top level (nested imports only need their module to exist
before the call, so they add a module without ordering it). The flattened text is then:

    from __future__ imports, standard-library and third-party imports (hoisted, deduplicated)
    each module's code in dependency order, with its pgolf imports removed

Removing the pgolf imports is sound because top-level names are unique across core modules
(``tests/unit/test_unique_names.py``): every name a module imports already exists in the one shared
namespace. ``from pgolf.x import a as b`` becomes ``b = a``; a removed import that leaves a block
empty becomes ``pass``. Anything this cannot flatten faithfully (``import pgolf.x``, relative or star
imports, a core module importing a tooling module, two modules binding one name to different things)
is refused with an error that names the file and line.
"""

import ast
import io
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pgolf
from pgolf.artifact.size import is_tooling_module
from pgolf.errors import PgolfError

PACKAGE_NAME = "pgolf"
# typing's deprecated aliases of collections.abc classes: the same thing in annotations, isinstance and
# subscripts, so two modules may spell them either way.
ABC_ALIASES_IN_TYPING = frozenset({
    "AsyncGenerator", "AsyncIterable", "AsyncIterator", "Awaitable", "Callable", "Collection", "Container",
    "Coroutine", "Generator", "Hashable", "ItemsView", "Iterable", "Iterator", "KeysView", "Mapping",
    "MappingView", "MutableMapping", "MutableSequence", "MutableSet", "Reversible", "Sequence", "Sized",
    "ValuesView"})


class ExportError(PgolfError):
    """The package cannot be flattened into one faithful script (the message says where and why)."""


@dataclass
class ImportSite:
    """One import statement of a module, with where it stands."""

    node: ast.Import | ast.ImportFrom
    top_level: bool
    type_checking: bool

    @property
    def is_pgolf(self) -> bool:
        if isinstance(self.node, ast.ImportFrom):
            return self.node.level == 0 and _is_pgolf_name(self.node.module or "")
        return any(_is_pgolf_name(alias.name) for alias in self.node.names)


@dataclass
class CoreModule:
    """A parsed core module and the pgolf modules it imports."""

    name: str
    path: Path
    source: str
    tree: ast.Module
    imports: list[ImportSite]
    ordering_deps: list[str] = field(default_factory=list)  # top-level imports: must come first
    runtime_deps: list[str] = field(default_factory=list)  # nested imports: must only be present

    @property
    def label(self) -> str:
        """``pgolf/model/gpt.py``: how the flattened file names the module's section."""
        return f"{self.name.replace('.', '/')}.py"


def _is_pgolf_name(module: str) -> bool:
    return module == PACKAGE_NAME or module.startswith(PACKAGE_NAME + ".")


def _is_type_checking_test(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _collect_import_sites(node: ast.AST, top_level: bool, type_checking: bool, sites: list[ImportSite]) -> None:
    """Every import statement under ``node``, noting whether it is at module top level or under
    ``if TYPE_CHECKING:`` (which only type checkers execute)."""
    for field_name, value in ast.iter_fields(node):
        if not isinstance(value, list):
            continue
        in_type_checking = type_checking or (
            isinstance(node, ast.If) and field_name == "body" and _is_type_checking_test(node.test))
        for child in value:
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                sites.append(ImportSite(child, top_level, in_type_checking))
            elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                _collect_import_sites(child, False, in_type_checking, sites)


def module_path(package_dir: Path, module: str) -> Path:
    """The source file of a pgolf module (``pgolf.model.gpt`` -> ``<package_dir>/model/gpt.py``)."""
    parts = module.split(".")[1:]
    candidate = package_dir.joinpath(*parts).with_suffix(".py") if parts else package_dir / "__init__.py"
    if candidate.is_file():
        return candidate
    package_init = package_dir.joinpath(*parts, "__init__.py")
    if package_init.is_file():
        return package_init
    raise ExportError(f"module {module} not found under {package_dir}.")


def parse_core_module(package_dir: Path, name: str) -> CoreModule:
    path = module_path(package_dir, name)
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as error:
        raise ExportError(f"{path} does not parse: {error}.") from None
    sites: list[ImportSite] = []
    _collect_import_sites(tree, True, False, sites)
    module = CoreModule(name, path, source, tree, sites)
    for site in sites:
        _check_import_form(module, site)
        if site.is_pgolf and not site.type_checking:
            target = site.node.module
            deps = module.ordering_deps if site.top_level else module.runtime_deps
            if target not in deps:
                deps.append(target)
    return module


def _check_import_form(module: CoreModule, site: ImportSite) -> None:
    """Refuse import forms that cannot be flattened into one namespace."""
    node, where = site.node, f"{module.path}:{site.node.lineno}"
    if isinstance(node, ast.ImportFrom) and node.level:
        raise ExportError(f"{where}: relative import; core modules use absolute imports (from pgolf.x import name).")
    if not site.is_pgolf:
        if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names) and site.top_level:
            raise ExportError(f"{where}: star import; import the names you use so the export can check them.")
        return
    if isinstance(node, ast.Import):
        raise ExportError(f"{where}: `import {node.names[0].name}` keeps names behind the package; write "
                          "`from pgolf.x import name` so the one-file export can flatten it.")
    if node.module == PACKAGE_NAME or any(alias.name == "*" for alias in node.names):
        raise ExportError(f"{where}: import names from the module that defines them "
                          "(from pgolf.x import name), not the package or a star.")
    if is_tooling_module(node.module) and not site.type_checking:
        raise ExportError(f"{where}: core module {module.name} imports tooling module {node.module}; tooling "
                          "(pgolf/commands/, exp/, export/, cli.py) never ships in train_gpt.py. Move "
                          "that code into a core module or the import into the tooling side.")


def core_module_order(entry: str = "pgolf.run", package_dir: Path | None = None) -> list[CoreModule]:
    """The core modules ``entry`` needs, each after the modules it imports at top level."""
    package_dir = package_dir or default_package_dir()
    if is_tooling_module(entry):
        raise ExportError(f"{entry} is a tooling module; the export starts from a core module such as pgolf.run.")
    parsed: dict[str, CoreModule] = {}
    ordered: list[CoreModule] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in parsed:
            if name in visiting:
                cycle = " -> ".join(visiting[visiting.index(name):] + [name])
                raise ExportError(f"top-level import cycle {cycle}; break it (a cycle also fails in the package).")
            return
        parsed[name] = module = parse_core_module(package_dir, name)
        visiting.append(name)
        for dep in module.ordering_deps:
            visit(dep)
        visiting.pop()
        ordered.append(module)

    visit(entry)
    while missing := [dep for module in ordered for dep in module.runtime_deps if dep not in parsed]:
        visit(missing[0])
    return [module for module in ordered if module.path.name != "__init__.py"]


def default_package_dir() -> Path:
    return Path(pgolf.__path__[0])


def top_level_bindings(tree: ast.Module) -> list[str]:
    """Names a module defines at top level (functions, classes, assignment targets)."""
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [target.id for target in targets if isinstance(target, ast.Name)]
    return names


@dataclass
class FlattenedSource:
    """The flattened program: hoisted imports, then each module's code in dependency order."""

    modules: list[CoreModule]
    import_lines: list[str]
    sections: list[str]
    namespace: set[str]  # every top-level name the flattened program binds

    @property
    def text(self) -> str:
        return "\n".join(self.import_lines) + "\n\n\n" + "\n\n\n".join(self.sections) + "\n"


class _ImportHoister:
    """Collects top-level standard-library/third-party imports, deduplicated, and the names they bind."""

    def __init__(self) -> None:
        self.future: list[str] = []
        self.plain: list[tuple[str, str | None]] = []
        self.from_names: dict[str, list[tuple[str, str | None]]] = {}
        self.bound: dict[str, tuple[str, str]] = {}  # name -> (what it is bound to, module that imports it)

    def add(self, node: ast.Import | ast.ImportFrom, owner: CoreModule) -> None:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            self.future += [alias.name for alias in node.names if alias.name not in self.future]
            return
        for alias in node.names:
            if isinstance(node, ast.Import):
                entry = (alias.name, alias.asname)
                name, target = (alias.asname, alias.name) if alias.asname else (alias.name.split(".")[0],) * 2
                if entry not in self.plain:
                    self.plain.append(entry)
            else:
                name, target = alias.asname or alias.name, f"{node.module}.{alias.name}"
                if self._bind(name, target, owner):  # bound before (maybe spelled typing.X vs collections.abc.X)
                    continue
                self.from_names.setdefault(node.module, []).append((alias.name, alias.asname))
                continue
            self._bind(name, target, owner)

    def _bind(self, name: str, target: str, owner: CoreModule) -> bool:
        if target.startswith("typing.") and target[len("typing."):] in ABC_ALIASES_IN_TYPING:
            target = "collections.abc." + target[len("typing."):]
        """Record that ``name`` means ``target``; True if it already did. Refuses two meanings."""
        previous = self.bound.get(name)
        if previous is None:
            self.bound[name] = (target, owner.label)
            return False
        if previous[0] != target:
            raise ExportError(f"{owner.label} imports {target} as {name!r} but {previous[1]} binds {name!r} to "
                              f"{previous[0]}; one namespace cannot hold both. Use another name in one of them.")
        return True

    def lines(self) -> list[str]:
        def spelled(name: str, asname: str | None) -> str:
            return f"{name} as {asname}" if asname else name

        def group(module: str) -> tuple[bool, str]:  # standard library first, then alphabetical
            return module.split(".")[0] not in sys.stdlib_module_names, module

        lines = [f"from __future__ import {', '.join(self.future)}"] if self.future else []
        for third_party in (False, True):
            lines += [f"import {spelled(name, asname)}" for name, asname in sorted(self.plain, key=lambda e: group(e[0]))
                      if group(name)[0] == third_party]
            lines += [f"from {module} import {', '.join(spelled(*entry) for entry in self.from_names[module])}"
                      for module in sorted(self.from_names, key=group) if group(module)[0] == third_party]
        return lines


def _line_span(module: CoreModule, node: ast.stmt) -> tuple[int, int]:
    """0-based [first, last+1) lines of ``node``, which must stand on lines of its own."""
    lines = module.source.splitlines()
    before = lines[node.lineno - 1].encode("utf-8")[:node.col_offset]
    after = lines[node.end_lineno - 1].encode("utf-8")[node.end_col_offset:].strip()
    if before.strip() or (after and not after.startswith(b"#")):
        raise ExportError(f"{module.path}:{node.lineno}: put this statement on lines of its own (no `;` and no "
                          "`if x: import ...` on one line) so the export can rewrite it.")
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return first - 1, node.end_lineno


def _pgolf_import_replacement(site: ImportSite) -> list[str]:
    """What a removed pgolf import leaves behind: ``b = a`` for ``a as b``, ``pass`` where a block needs it."""
    indent = " " * site.node.col_offset
    lines = [] if site.type_checking else [
        f"{indent}{alias.asname} = {alias.name}" for alias in site.node.names if alias.asname and alias.asname != alias.name]
    if not lines and not site.top_level:
        lines = [f"{indent}pass"]
    return lines


def _rewrite_module(module: CoreModule, hoister: _ImportHoister, baked: dict[str, str]) -> str:
    """The module's code with imports hoisted or removed and baked functions substituted."""
    edits: list[tuple[int, int, list[str]]] = []
    for site in module.imports:
        if site.is_pgolf:
            edits.append((*_line_span(module, site.node), _pgolf_import_replacement(site)))
        elif site.top_level:
            hoister.add(site.node, module)
            edits.append((*_line_span(module, site.node), []))
    for node in module.tree.body:
        if isinstance(node, ast.FunctionDef) and f"{module.name}.{node.name}" in baked:
            edits.append((*_line_span(module, node), baked[f"{module.name}.{node.name}"].splitlines()))
    inside_strings = _lines_inside_strings(module.source)
    lines = [(text, number in inside_strings) for number, text in enumerate(module.source.splitlines())]
    for start, stop, replacement in sorted(edits, reverse=True):
        lines[start:stop] = [(text, False) for text in replacement]
    return f"# ---- {module.label} ----\n" + _squeeze_blank_lines(lines)


def _lines_inside_strings(source: str) -> set[int]:
    """0-based numbers of the lines that continue a multi-line string (their blanks are content)."""
    inside: set[int] = set()
    fstring_starts: list[int] = []  # Python 3.12+ splits f-strings into START ... END tokens
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = tokenize.tok_name[token.type]
        if kind == "FSTRING_START":
            fstring_starts.append(token.start[0])
        elif kind in ("STRING", "FSTRING_END"):
            first = fstring_starts.pop() if kind == "FSTRING_END" else token.start[0]
            inside.update(range(first, token.end[0]))  # 1-based rows first+1..end == 0-based first..end-1
    return inside


def _squeeze_blank_lines(lines: list[tuple[str, bool]]) -> str:
    """At most two blank lines in a row outside strings (removed imports leave gaps), none at either end."""
    kept: list[str] = []
    for text, in_string in lines:
        if in_string or text.strip():
            kept.append(text)
        elif kept and kept[-2:] != ["", ""]:
            kept.append("")
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept)


def _check_imported_names_exist(modules: list[CoreModule], namespace: set[str]) -> None:
    for module in modules:
        for site in module.imports:
            if not site.is_pgolf or site.type_checking:
                continue
            missing = [alias.name for alias in site.node.names if alias.name not in namespace]
            if missing:
                raise ExportError(f"{module.path}:{site.node.lineno}: {', '.join(missing)} not defined at the top "
                                  f"level of any bundled module (is it a submodule? import names, not modules).")


def flatten_core_modules(entry: str = "pgolf.run", package_dir: Path | None = None, *,
                         baked_functions: dict[str, str] | None = None) -> FlattenedSource:
    """Flatten ``entry`` and the core modules it needs into one program (see the module docstring).

    ``baked_functions`` maps ``"pgolf.module.function"`` to replacement source for that top-level
    function (values the script cannot compute itself, such as the package's code hash).
    """
    baked = dict(baked_functions or {})
    modules = core_module_order(entry, package_dir)
    hoister = _ImportHoister()
    sections = [_rewrite_module(module, hoister, baked) for module in modules]
    functions = {f"{m.name}.{n.name}" for m in modules for n in m.tree.body if isinstance(n, ast.FunctionDef)}
    bundled = {module.name for module in modules}
    missing = [name for name in baked if name.rsplit(".", 1)[0] in bundled and name not in functions]
    if missing:
        raise ExportError(f"cannot bake {', '.join(missing)}: the module is bundled but has no such top-level function.")
    defined: dict[str, str] = {}
    for module in modules:
        aliases = [a.asname for s in module.imports if s.is_pgolf and s.top_level for a in s.node.names if a.asname]
        for name in top_level_bindings(module.tree) + aliases:
            if name in hoister.bound:
                raise ExportError(f"{module.label} defines {name!r}, which {hoister.bound[name][1]} imports from "
                                  f"{hoister.bound[name][0]}; rename one so the shared namespace holds both.")
            if defined.setdefault(name, module.label) != module.label:
                raise ExportError(f"{name!r} is defined at top level in both {defined[name]} and {module.label}; "
                                  "top-level names must be unique across core modules.")
    namespace = set(defined) | set(hoister.bound)
    _check_imported_names_exist(modules, namespace)
    return FlattenedSource(modules, hoister.lines(), sections, namespace)
