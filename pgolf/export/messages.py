"""Error messages out of the counted script, kept in the readable one (tooling; never exported itself).

The messages of ``raise`` and ``assert`` statements are the biggest share of the exported script's
counted bytes that the program does not need in order to run (about 8.8 KB of the 55.8 KB wrapped
record_sp8192 export). :func:`terse_messages` replaces each one with a single int: the line of its
statement in ``train_gpt.readable.py``, which the same export writes beside ``train_gpt.py``, so the
message is still there to read at the line the number names. ``pgolf export --keep-messages`` keeps
the messages; the exported entry prints the pointer (file and line) when such an error stops a run.

Only arguments that are nothing but a message go: a string (literal, f-string, ``+`` or ``%`` on a
string, ``"...".format(...)``) passed alone to a class whose one argument is read by a person, or any
lone argument of a ``PgolfError`` subclass (its argument is a message by definition, even when a
variable or a helper function words it; the exporter then drops what only the message needed). That
excludes KeyError (its argument is the key), SystemExit, KeyboardInterrupt and StopIteration (their
arguments are values the program or Python uses) and any class with its own ``__init__`` or
``__new__`` (its arguments may be structured). Checks stay: an assert keeps its test.

A raised message keeps the values it quotes (what an f-string interpolates, the operands of ``%``,
``+`` and ``.format``) as further arguments after the line, ``ConfigError(580, path)``, so the error a
competitor sees on another machine still names the file or field; the entry prints them beside the
pointer. OSError and its subclasses get the line alone: two arguments would make the first an errno.
"""

import ast

from pgolf.export.program import referenced_name

# Builtin classes whose single argument is a message for a person and nothing else.
MESSAGE_EXCEPTIONS = frozenset({
    "Exception", "ValueError", "RuntimeError", "TypeError", "AssertionError", "FileNotFoundError", "OSError",
    "NotImplementedError", "IndexError"})
# pgolf's base of the errors a user can cause: "a message that names the thing and the fix" (errors.py).
USER_ERROR_BASE = "PgolfError"
# Builtin classes for which a second argument means something else (OSError(errno, strerror)).
ERRNO_EXCEPTIONS = frozenset({"OSError", "FileNotFoundError"})
# Methods that make a class's arguments something other than a message.
CONSTRUCTOR_METHODS = frozenset({"__init__", "__new__"})


def terse_messages(readable_source: str) -> tuple[str, int]:
    """``readable_source`` with each raise/assert message replaced by its statement's line, and how many."""
    tree = ast.parse(readable_source)
    removed = terse_tree(tree)
    return ast.unparse(tree), removed


def terse_tree(tree: ast.Module) -> int:
    """Replace, in place, each raise/assert message of ``tree`` (parsed from the readable source, so its
    line numbers are the readable file's) by its statement's line; returns how many."""
    message_classes = message_exception_names(tree)
    user_errors = user_error_names(tree, message_classes)
    errno_errors = subclass_names(tree, message_classes, ERRNO_EXCEPTIONS)
    removed = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and raises_message(node, message_classes, user_errors):
            quoted = [] if referenced_name(node.exc.func) in errno_errors else quoted_values(node.exc.args[0])
            node.exc.args = [line_constant(node), *quoted]
            removed += 1
        elif isinstance(node, ast.Assert) and node.msg is not None and is_message(node.msg):
            node.msg = line_constant(node)
            removed += 1
    return removed


def user_error_names(tree: ast.Module, message_classes: frozenset[str]) -> frozenset[str]:
    """The program's message classes that derive from :data:`USER_ERROR_BASE` (or are it): their one
    argument is a message by the package's own rule, however it is computed (a variable, a call to a
    function that words it), so it goes whatever its form."""
    return subclass_names(tree, message_classes, frozenset({USER_ERROR_BASE}))


def subclass_names(tree: ast.Module, names: frozenset[str], roots: frozenset[str]) -> frozenset[str]:
    """Those of ``names`` that are one of ``roots`` or derive from one through the program's classes."""
    bases = {node.name: [referenced_name(base) for base in node.bases]
             for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}

    def derives(name: str | None, seen: frozenset[str]) -> bool:
        if name in roots:
            return True
        return name in bases and name not in seen and any(derives(base, seen | {name}) for base in bases[name])

    return frozenset(name for name in names if derives(name, frozenset()))


def quoted_values(message: ast.expr) -> list[ast.expr]:
    """The expressions a message quotes, in order: what an f-string interpolates, the operands of ``%``
    (each item of a tuple), ``+`` (all but string pieces) and ``.format``; none for anything else."""
    if isinstance(message, ast.JoinedStr):
        return [part.value for part in message.values if isinstance(part, ast.FormattedValue)]
    if isinstance(message, ast.BinOp) and isinstance(message.op, ast.Mod) and is_message(message.left):
        operand = message.right
        return [*quoted_values(message.left), *(operand.elts if isinstance(operand, ast.Tuple) else [operand])]
    if isinstance(message, ast.BinOp) and isinstance(message.op, ast.Add):
        return [*quoted_values(message.left), *_piece_values(message.right)]
    if isinstance(message, ast.Call) and is_message(message):
        return [*message.args, *(keyword.value for keyword in message.keywords)]
    return []


def _piece_values(piece: ast.expr) -> list[ast.expr]:
    """A ``+`` operand's quoted values: a literal string has none, an f-string its own, others are one."""
    if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
        return []
    return quoted_values(piece) if is_message(piece) else [piece]


def line_constant(statement: ast.stmt) -> ast.Constant:
    """The pointer that replaces a message: the statement's line in the readable source."""
    return ast.Constant(statement.lineno)


def raises_message(node: ast.Raise, message_classes: frozenset[str], user_errors: frozenset[str] = frozenset()) -> bool:
    """Whether ``node`` is ``raise X(<message>)`` (``from ...`` allowed) with X a message class; for a
    user error class (:func:`user_error_names`) any one argument is its message."""
    call = node.exc
    if not (isinstance(call, ast.Call) and referenced_name(call.func) in message_classes
            and len(call.args) == 1 and not call.keywords and not isinstance(call.args[0], ast.Starred)):
        return False
    return referenced_name(call.func) in user_errors or is_message(call.args[0])


def is_message(node: ast.expr) -> bool:
    """Whether ``node`` evaluates to a string built for a person: literal, f-string, ``+``/``%``, ``.format``."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return is_message(node.left)  # a str on the left makes the result a str ("a" + b + "c" nests left)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)
    return False


def message_exception_names(tree: ast.Module) -> frozenset[str]:
    """The builtin message classes plus the program's classes that take a message and nothing else.

    A program class qualifies when every definition of its name has only qualifying bases (a builtin
    message class, Exception, or a qualifying program class), no decorator or metaclass, and no
    constructor of its own. A program class shadows a builtin of the same name.
    """
    definitions: dict[str, list[ast.ClassDef]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            definitions.setdefault(node.name, []).append(node)

    def takes_message(name: str | None, inside: frozenset[str]) -> bool:
        if name not in definitions:
            return name in MESSAGE_EXCEPTIONS
        if name in inside:  # a cycle of bases is not a class Python can build
            return False
        return all(is_plain_subclass(definition, lambda base: takes_message(base, inside | {name}))
                   for definition in definitions[name])

    names = set(MESSAGE_EXCEPTIONS) - definitions.keys()
    names.update(name for name in definitions if takes_message(name, frozenset()))
    return frozenset(names)


def is_plain_subclass(definition: ast.ClassDef, base_takes_message) -> bool:
    """Whether the class only renames its bases: bases qualify, no decorator/metaclass, no constructor."""
    if not definition.bases or definition.keywords or definition.decorator_list:
        return False
    if any(defines_constructor(statement) for statement in definition.body):
        return False
    return all(base_takes_message(referenced_name(base)) for base in definition.bases)


def defines_constructor(statement: ast.stmt) -> bool:
    """Whether a class-body statement binds ``__init__`` or ``__new__`` (a def or an assignment)."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return statement.name in CONSTRUCTOR_METHODS
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        targets = [statement.target]
    else:
        return False
    return any(isinstance(target, ast.Name) and target.id in CONSTRUCTOR_METHODS for target in targets)
