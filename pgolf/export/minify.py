"""Conservative minification and the lzma + base85 + exec wrapper of the exported ``train_gpt.py`` (tooling).

Minifying removes only what cannot change behaviour: docstrings and other string-literal statements,
comments, blank lines, spaces between tokens that do not need them, and indentation beyond one space
per level. Names, literals, asserts and annotations are kept. The result is checked: it must parse
to the same syntax tree as the input without its string-literal statements, so a minifier mistake
stops the export instead of shipping a different program.

The wrapper is the records' form (SPEC 4.1): the minified source, compressed with raw LZMA2 (preset
9 | extreme) and base85-encoded, decompressed and run with ``exec``; pgolf's adds two short lines that
register the source with ``linecache`` first (see ``WRAP_HEAD``). Its size on disk is the counted code
size.
"""

import ast
import base64
import io
import lzma
import tokenize

# pb=0: source text has no 2- or 4-byte structure for position bits to model (about 0.25% smaller).
WRAP_COMPRESS_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "pb": 0}]
# Decoding a raw LZMA2 stream needs only a dictionary at least as long as the data (lc/lp/pb travel in
# the stream); the default (preset 6, 8 MiB) covers any script, so the stub does not spell them out.
WRAP_DECODE_FILTERS = [{"id": lzma.FILTER_LZMA2}]
WRAP_MAX_SOURCE_BYTES = 8 * 2**20
# The source is registered in linecache under "<pgolf>" before it runs, so tools that read a function's
# source (Triton's JIT compiles the fused kernels from it; tracebacks show the failing line) work in the
# exported script too. That costs about 100 bytes.
WRAP_HEAD = b'import lzma,base64,linecache as L\n_S=lzma.decompress(base64.b85decode("'
WRAP_TAIL = (b'"),format=lzma.FORMAT_RAW,filters=[{"id":lzma.FILTER_LZMA2}]).decode()\n'
             b'L.cache["<pgolf>"]=(len(_S),None,_S.splitlines(True),"<pgolf>")\nexec(compile(_S,"<pgolf>","exec"))\n')


class _StringStatementRemover(ast.NodeTransformer):
    """Drops statements that are a bare string literal (docstrings included); ``pass`` keeps a block."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for field_name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                kept = [stmt for stmt in value if not _is_string_statement(stmt)]
                setattr(node, field_name, kept or [ast.Pass()])
        return node


def _is_string_statement(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def strip_string_statements(tree: ast.Module) -> ast.Module:
    """``tree`` without docstrings or other string-literal statements (modified in place and returned)."""
    return _StringStatementRemover().visit(tree)


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_" or ord(char) > 127


def _needs_space(previous: tokenize.TokenInfo, following: str) -> bool:
    """Whether two adjacent tokens would merge (``return x``, ``1 if``) or misparse (``1 .real``)."""
    if _is_word_char(previous.string[-1]) and _is_word_char(following[0]):
        return True
    return previous.type == tokenize.NUMBER and following[0] == "."


def _source_slice(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    """Text between two tokenize positions (1-based rows, 0-based columns)."""
    if start[0] == end[0]:
        return lines[start[0] - 1][start[1]:end[1]]
    middle = lines[start[0]:end[0] - 1]
    return "".join([lines[start[0] - 1][start[1]:], *middle, lines[end[0] - 1][:end[1]]])


def _compact_tokens(source: str) -> str:
    """Re-emit ``source`` with one space of indentation per level and only the spaces tokens need.

    Strings are copied verbatim; on Python 3.12+ an f-string arrives as several tokens and is copied
    whole from its first to its last token, so nothing inside it is touched.
    """
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    parts: list[str] = []
    depth, previous, fstring_start, fstring_depth = 0, None, None, 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = tokenize.tok_name[token.type]
        if kind == "FSTRING_START":
            fstring_depth += 1
            fstring_start = fstring_start or token.start
            continue
        if fstring_depth:
            if kind == "FSTRING_END":
                fstring_depth -= 1
            if fstring_depth:
                continue
            token = token._replace(type=tokenize.STRING, string=_source_slice(lines, fstring_start, token.end))
            fstring_start = None
        if kind == "INDENT":
            depth += 1
        elif kind == "DEDENT":
            depth -= 1
        elif kind == "NEWLINE":
            out.append(" " * depth + "".join(parts))
            parts, previous = [], None
        elif kind not in ("NL", "COMMENT", "ENDMARKER", "ENCODING"):
            if previous is not None and _needs_space(previous, token.string):
                parts.append(" ")
            parts.append(token.string)
            previous = token
    return "\n".join(out) + "\n"


def minify_source(source: str) -> str:
    """Minified ``source`` (see the module docstring); raises if the result would parse differently."""
    tree = strip_string_statements(ast.parse(source))
    expected = ast.dump(tree)
    minified = _compact_tokens(ast.unparse(tree))
    if ast.dump(ast.parse(minified)) != expected:
        raise ValueError("minification changed the program's syntax tree; this is a bug in pgolf.export.minify")
    return minified


def wrap_source(source: str) -> bytes:
    """The two-line self-extracting script that runs ``source``."""
    data = source.encode("utf-8")
    if len(data) > WRAP_MAX_SOURCE_BYTES:
        raise ValueError(f"{len(data)} bytes of source exceed the wrapper's {WRAP_MAX_SOURCE_BYTES}-byte window.")
    compressed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=WRAP_COMPRESS_FILTERS)
    return WRAP_HEAD + base64.b85encode(compressed) + WRAP_TAIL


def unwrap_script(wrapped: bytes) -> str:
    """The source a wrapped script runs (the inverse of :func:`wrap_source`, for checks and reviews)."""
    wrapped = wrapped.rstrip(b"\n") + b"\n"  # the exporter may pad with newlines to settle its own size
    if not (wrapped.startswith(WRAP_HEAD) and wrapped.endswith(WRAP_TAIL)):
        raise ValueError("not a script written by pgolf export (unexpected wrapper lines).")
    payload = base64.b85decode(wrapped[len(WRAP_HEAD):-len(WRAP_TAIL)])
    return lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=WRAP_DECODE_FILTERS).decode("utf-8")
