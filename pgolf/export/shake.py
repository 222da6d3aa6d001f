"""Drop what the specialized program never reaches, and prove that nothing it reaches was dropped (tooling).

**Shaking.** From the script's entry (its last section), a top-level name is kept when kept code reads
it. Annotations do not keep anything alive: once shaking is done, an annotation that names a dropped
class is removed (in a class body, where dataclass fields need one, it becomes ``object``). A method of a kept class is kept
when its name is a dunder, when a class outside the program that the class derives from has an
attribute of that name (``forward`` of ``nn.Module``: torch calls it), or when kept code mentions the
name as an attribute (``x.name``) or a string (``getattr(x, "name")``). Import aliases nothing reads go.
Module-level assignments are definitions like any other: core modules have no import-time side
effects (docs/development.md), so an unread one is dropped with the code that would read it.

**Checking.** :func:`unresolved_names` reads the final program with the standard library's
``symtable`` (Python's own scoping rules, not the exporter's): every global name a scope reads must be
bound at the top level of the program or be a builtin. A dropped definition that is still referenced
anywhere fails the export, naming the names.

**Switches.** A module that declares ``<NAME>_EXPORT_SWITCH = "<expression over flat config names>"``
promises that its code runs only when the expression is true. When it is false and anything of the
module is still reachable, the export fails and says who reaches it (see docs/export.md).
"""

import ast
import builtins
import symtable
from dataclasses import dataclass, field

from pgolf.export.flatten import ExportError
from pgolf.export.program import Program, Section, is_docstring, referenced_name, statement_bound_names

SWITCH_SUFFIX = "_EXPORT_SWITCH"
# Names every module namespace has without a definition.
# A program that mentions one of these may read class-field annotations at run time: they stay as written.
ANNOTATION_READERS = frozenset({"get_type_hints", "get_annotations", "__annotations__", "signature",
                                "__dataclass_fields__", "__signature__"})
# Annotations dataclasses give a meaning to (a field annotated with one is not an ordinary field).
SPECIAL_FIELD_ANNOTATIONS = frozenset({"ClassVar", "InitVar", "KW_ONLY", "Final"})
# Of those, the ones dataclasses recognise by the object the annotation names (or, in a string, by the
# name the module binds): the name must stay bound, whether or not anything else reads it.
DATACLASS_MARKERS = frozenset({"ClassVar", "InitVar", "KW_ONLY"})
MODULE_DUNDERS = frozenset({"__name__", "__file__", "__doc__", "__builtins__", "__spec__", "__loader__",
                            "__package__", "__annotations__", "__dict__"})


@dataclass
class ShakeResult:
    kept: set[str]
    # Name -> the kept name that first needed it (the entry's are "entry"), for --explain and errors.
    needed_by: dict[str, str] = field(default_factory=dict)


class _References(ast.NodeVisitor):
    """Names, attribute names and strings a piece of code mentions (annotations aside)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.attributes: set[str] = set()
        self.strings: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.names.add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.attributes.add(node.attr)
        self.visit(node.value)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.strings.add(node.value)

    def visit_arg(self, node: ast.arg) -> None:
        pass  # annotations only

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for item in (*node.decorator_list, node.args, *node.body):
            self.visit(item)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arguments(self, node: ast.arguments) -> None:
        for default in [*node.defaults, *node.kw_defaults]:
            if default is not None:
                self.visit(default)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)


def references(*nodes: ast.AST) -> _References:
    found = _References()
    for node in nodes:
        found.visit(node)
    return found


class ExternalBases:
    """Attribute names of the classes outside the program that program classes derive from
    (``nn.Module``, ``torch.optim.Optimizer``, ``Exception``...), resolved through the program's imports."""

    def __init__(self, program: Program):
        self.namespace: dict = {}
        for statement in program.statements():
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                try:
                    exec(compile(ast.Module(body=[statement], type_ignores=[]), "<imports>", "exec"), self.namespace)
                except Exception:  # an optional dependency missing here: its classes keep every method
                    pass
        self.cache: dict[str, set[str] | None] = {}

    def attributes(self, base: ast.expr) -> set[str] | None:
        """None when the base cannot be resolved here (keep every method then)."""
        text = ast.unparse(base)
        if text not in self.cache:
            try:
                self.cache[text] = set(dir(eval(text, dict(self.namespace))))
            except Exception:
                self.cache[text] = None
        return self.cache[text]


def _method_kept(name: str, inherited: set[str] | None, used: _References) -> bool:
    if inherited is None or (name.startswith("__") and name.endswith("__")):
        return True
    return name in inherited or name in used.attributes or name in used.strings


def shake(program: Program, bases: ExternalBases | None = None) -> ShakeResult:
    """Remove every top-level definition and method the entry section (the last) never reaches."""
    bases = bases or ExternalBases(program)
    definitions: dict[str, list[ast.stmt]] = {}
    for statement in program.statements():
        for name in statement_bound_names(statement):
            definitions.setdefault(name, []).append(statement)
    classes = {s.name: s for s in program.statements() if isinstance(s, ast.ClassDef)}
    inherited = {name: _inherited_attributes(cls, classes, bases) for name, cls in classes.items()}
    used = _References()
    result = ShakeResult(set())
    todo: list[tuple[str, str]] = []
    kept_methods: dict[str, set[str]] = {name: set() for name in classes}

    def need(names: set[str], by: str) -> None:
        for name in sorted(names):
            if name in definitions and name not in result.kept:
                result.kept.add(name)
                result.needed_by.setdefault(name, by)
                todo.append((name, by))

    def absorb(found: _References, by: str) -> None:
        used.attributes |= found.attributes
        used.strings |= found.strings
        need(found.names, by)

    entry = program.sections[-1]
    for statement in entry.body:
        absorb(references(statement), "entry")
        need(set(statement_bound_names(statement)), "entry")
    for statement in program.statements():  # module-level code that is not a definition runs anyway
        if not statement_bound_names(statement) and not is_docstring(statement):
            absorb(references(statement), "module level")
    while True:
        while todo:
            name, _ = todo.pop()
            for statement in definitions[name]:
                if isinstance(statement, ast.ClassDef):
                    absorb(references(*statement.decorator_list, *statement.bases,
                                      *[k.value for k in statement.keywords],
                                      *[s for s in statement.body if not isinstance(s, (ast.FunctionDef,
                                                                                          ast.AsyncFunctionDef))]),
                           name)
                    need(marker_names(statement), name)
                elif isinstance(statement, (ast.Import, ast.ImportFrom)):
                    continue
                else:
                    absorb(references(statement), name)
        grew = False
        for class_name in sorted(result.kept & set(classes)):
            for method in classes[class_name].body:
                if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                        and method.name not in kept_methods[class_name] \
                        and _method_kept(method.name, inherited[class_name], used):
                    kept_methods[class_name].add(method.name)
                    absorb(references(method), f"{class_name}.{method.name}")
                    grew = True
        if not grew and not todo:
            break
    _remove_unreached(program, result.kept, classes, kept_methods)
    return result


def marker_names(cls: ast.ClassDef) -> set[str]:
    """Names the class body's ``ClassVar``/``InitVar``/``KW_ONLY`` annotations spell the marker with
    (``ClassVar``, or ``typing`` of ``typing.ClassVar``): kept, although annotations keep nothing else
    alive, since without them dataclasses would take the field for an ordinary one."""
    heads = [_marker_head(s.annotation) for s in cls.body if isinstance(s, ast.AnnAssign)]
    return {n.id for head in heads if head is not None for n in ast.walk(head) if isinstance(n, ast.Name)}


def _marker_head(annotation: ast.expr) -> ast.expr | None:
    """``ClassVar`` of ``ClassVar[int]`` (``typing.ClassVar`` of ``typing.ClassVar[int]``, also inside a
    string annotation); None when the annotation is no dataclass marker."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    head = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    return head if referenced_name(head) in DATACLASS_MARKERS else None


def _inherited_attributes(cls: ast.ClassDef, classes: dict[str, ast.ClassDef], bases: ExternalBases,
                          seen: frozenset[str] = frozenset()) -> set[str] | None:
    """Attribute names ``cls`` gets from classes outside the program (through program bases too)."""
    found: set[str] = set()
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
            inner = _inherited_attributes(classes[base.id], classes, bases, seen | {cls.name})
        else:
            inner = bases.attributes(base)
        if inner is None:
            return None
        found |= inner
    return found


def _remove_unreached(program: Program, kept: set[str], classes: dict[str, ast.ClassDef],
                      kept_methods: dict[str, set[str]]) -> None:
    for section in program.sections[:-1]:
        body = []
        for statement in section.body:
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                statement.names = [a for a in statement.names if (a.asname or a.name.split(".")[0]) in kept]
                if statement.names:
                    body.append(statement)
                continue
            names = statement_bound_names(statement)
            if is_docstring(statement) or not names or any(name in kept for name in names):
                body.append(statement)
        section.body = body
    for name in kept & set(classes):
        cls = classes[name]
        cls.body = [s for s in cls.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                    or s.name in kept_methods[name]] or [ast.Pass()]


class _AnnotationCleaner(ast.NodeTransformer):
    """Annotations that name a dropped definition: removed (functions) or ``object`` (class fields)."""

    def __init__(self, defined: set[str]):
        self.known = defined | set(dir(builtins))

    def dangling(self, annotation: ast.expr | None) -> bool:
        return annotation is not None and any(
            isinstance(n, ast.Name) and n.id not in self.known for n in ast.walk(annotation))

    def visit_arg(self, node: ast.arg) -> ast.arg:
        if self.dangling(node.annotation):
            node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        if self.dangling(node.returns):
            node.returns = None
        self.generic_visit(node)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AnnAssign:
        if self.dangling(node.annotation):
            # ``ClassVar[Dropped]`` -> ``ClassVar`` (still a class variable to dataclasses), else ``object``
            head = _marker_head(node.annotation)
            keep = head is not None and not isinstance(node.annotation, ast.Constant) and not self.dangling(head)
            node.annotation = head if keep else ast.Name(id="object", ctx=ast.Load())
        self.generic_visit(node)
        return node


def drop_dangling_annotations(program: Program) -> None:
    """Once shaking is done (until then annotations carry the types the folding reads); then the
    dataclass fields' annotations are shortened (:func:`shorten_field_annotations`)."""
    cleaner = _AnnotationCleaner({n for s in program.statements() for n in statement_bound_names(s)})
    for section in program.sections:
        section.body = [cleaner.visit(statement) for statement in section.body]
    shorten_field_annotations(program)


def shorten_field_annotations(program: Program) -> int:
    """A dataclass needs each field annotated but reads nothing of the annotation beyond ClassVar,
    InitVar and KW_ONLY: one that is not a plain name becomes ``object`` (``Literal['a', 'b']``,
    ``tuple[int, ...]``, ``torch.Tensor``, ``int | None``). Only when nothing in the program can read
    annotations (:func:`annotations_may_be_read`). Returns how many changed."""
    if annotations_may_be_read(program):
        return 0
    changed = 0
    for statement in program.statements():
        if not (isinstance(statement, ast.ClassDef) and _is_plain_dataclass(statement)):
            continue
        for item in statement.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                short = _short_annotation(item.annotation)
                if short is not None:
                    item.annotation = ast.copy_location(ast.Name(id=short, ctx=ast.Load()), item.annotation)
                    changed += 1
    return changed


def annotations_may_be_read(program: Program) -> bool:
    """The program mentions a reader of annotations, or reads ``.type`` of something a
    ``dataclasses.fields()`` call produced (or uses such a call other than as a loop's iterable)."""
    found = references(*program.statements())
    if (found.names | found.attributes | found.strings) & ANNOTATION_READERS:
        return True
    field_loop_names: set[str] = set()
    loop_iterables: set[int] = set()
    for node in ast.walk(program.tree()):
        if isinstance(node, (ast.For, ast.comprehension)):
            loop_iterables.add(id(node.iter))
            if _calls_named(node.iter, "fields"):
                field_loop_names |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    for node in ast.walk(program.tree()):
        if _calls_named(node, "fields") and id(node) not in loop_iterables:
            return True
        if isinstance(node, ast.Attribute) and node.attr == "type" and isinstance(node.value, ast.Name) \
                and node.value.id in field_loop_names:
            return True
    return False


def _calls_named(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Call) and referenced_name(node.func) == name


def _is_plain_dataclass(cls: ast.ClassDef) -> bool:
    """Decorated with ``dataclass`` (called or not) and nothing else."""
    decorators = [d.func if isinstance(d, ast.Call) else d for d in cls.decorator_list]
    return bool(decorators) and all(referenced_name(d) == "dataclass" for d in decorators)


def _short_annotation(annotation: ast.expr) -> str | None:
    """``object`` (true of every value, and what compresses best) for a field annotation that is not a
    plain name; None to keep it: a plain name, a string, or one that dataclasses reads."""
    if isinstance(annotation, (ast.Name, ast.Constant)):
        return None  # from a string annotation dataclasses reads ClassVar/InitVar out of the text
    if any(isinstance(n, (ast.Name, ast.Attribute)) and (getattr(n, "id", None) or getattr(n, "attr", None))
           in SPECIAL_FIELD_ANNOTATIONS for n in ast.walk(annotation)):
        return None
    return "object"


def unresolved_names(source: str) -> list[str]:
    """Global names that ``source`` reads but never binds and builtins lack (Python's own scoping)."""
    table = symtable.symtable(source, "<pgolf>", "exec")
    bound = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    tables = [table]
    while tables:  # names a function assigns after `global name` are module names too
        current = tables.pop()
        tables.extend(current.get_children())
        bound |= {s.get_name() for s in current.get_symbols() if s.is_declared_global() and s.is_assigned()}
    known = bound | set(dir(builtins)) | MODULE_DUNDERS
    missing: set[str] = set()
    tables = [table]
    while tables:
        current = tables.pop()
        tables.extend(current.get_children())
        for symbol in current.get_symbols():
            if not symbol.is_referenced() or symbol.get_name() in known:
                continue
            if current is table or symbol.is_global():
                missing.add(symbol.get_name())
    return sorted(missing)


def check_names_resolve(source: str) -> None:
    missing = unresolved_names(source)
    if missing:
        raise ExportError(f"the specialized program reads names it no longer defines: {', '.join(missing)}. "
                          "The exporter dropped something still in use; please report this with the configuration.")


def evaluate_switch(section: Section, flat_config: dict) -> bool | None:
    """The module's declared switch on this configuration (None: the module declares none)."""
    if not section.switch:
        return None
    try:
        return bool(eval(section.switch, {"__builtins__": {}}, dict(flat_config)))
    except Exception as error:
        raise ExportError(f"{section.label}: its export switch {section.switch!r} cannot be evaluated over the "
                          f"configuration's flat names ({error}).") from None


def check_switches(program: Program, flat_config: dict, result: ShakeResult) -> None:
    """A module whose declared switch is off must have nothing left; otherwise say who still reaches it."""
    for section in program.sections[:-1]:
        if evaluate_switch(section, flat_config) is not False:
            continue
        left = [n for s in section.body if not is_docstring(s) for n in statement_bound_names(s)]
        if left:
            reached = ", ".join(f"{name} (needed by {result.needed_by.get(name, '?')})" for name in left)
            raise ExportError(
                f"{section.label} declares that it runs only when {section.switch}, which is false for this "
                f"configuration, yet the export still reaches {reached}. Guard the call site with the switch's "
                "config field (docs/export.md, 'Making a feature droppable').")


def declared_switch(tree: ast.Module, label: str) -> str:
    """The module's ``<NAME>_EXPORT_SWITCH = "expression"`` ("" when it declares none)."""
    found = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id.endswith(SWITCH_SUFFIX):
            if not (isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)):
                raise ExportError(f"{label}: {statement.targets[0].id} must be a string (an expression over flat "
                                  "config names, such as \"smear_gate_enabled\").")
            found.append(statement.value.value)
    if len(found) > 1:
        raise ExportError(f"{label} declares {len(found)} export switches; a module has at most one.")
    return found[0] if found else ""


def keyword_names(program: Program) -> set[str]:
    """Every name some call in the program may pass by keyword: ``f(x=1)``, and, for ``f(**mapping)``,
    every string key of a dict display anywhere in the program."""
    found = set()
    for node in ast.walk(program.tree()):
        if isinstance(node, ast.Call):
            found |= {k.arg for k in node.keywords if k.arg}
        elif isinstance(node, ast.Dict):
            found |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return found


def make_positional_only(program: Program, bases: ExternalBases) -> int:
    """Parameters no call ever passes by keyword become positional-only, so the minifier may shorten them.

    Left alone: decorated functions (a decorator such as ``triton.jit`` may read the signature) unless
    every decorator is one of :data:`PASS_THROUGH_DECORATORS` (``property``, ``torch.no_grad()``, ...),
    lambdas, and methods a class outside the program declares (a framework may call them with keywords).
    Returns how many parameters changed."""
    keywords = keyword_names(program)
    classes = {s.name: s for s in program.statements() if isinstance(s, ast.ClassDef)}
    changed = 0
    for statement in program.statements():
        if isinstance(statement, ast.FunctionDef):
            changed += _positional_only(statement, keywords)
        elif isinstance(statement, ast.ClassDef):
            inherited = _inherited_attributes(statement, classes, bases)
            for method in statement.body:
                if isinstance(method, ast.FunctionDef) and inherited is not None and method.name not in inherited \
                        and not (method.name.startswith("__") and method.name.endswith("__") and method.name != "__init__"):
                    changed += _positional_only(method, keywords)
    return changed


# Decorators that call the function with the arguments its callers give (a property getter: with the
# instance alone) and never read its signature, so its parameters may become positional-only.
PASS_THROUGH_DECORATORS = frozenset({"property", "cached_property", "staticmethod", "cache", "lru_cache", "no_grad",
                                     "enable_grad", "inference_mode", "contextmanager"})


def _positional_only(function: ast.FunctionDef, keywords: set[str]) -> int:
    if not all(referenced_name(d.func if isinstance(d, ast.Call) else d) in PASS_THROUGH_DECORATORS
               for d in function.decorator_list):
        return 0
    args = function.args
    count = 0
    while count < len(args.args) and args.args[count].arg not in keywords:
        count += 1
    args.posonlyargs = args.posonlyargs + args.args[:count]
    args.args = args.args[count:]
    return count
