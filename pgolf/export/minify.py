"""Minification (python-minifier) and the compress + base85 + exec wrapper of the exported ``train_gpt.py``
(tooling).

The specialized program is minified by python-minifier (PyPI ``python-minifier``) with
:data:`MINIFY_OPTIONS`: docstrings and other literal statements go, globals and locals get short
names, annotations go (except on class fields, which dataclasses need). Literals are not hoisted and
asserts stay: hoisting costs bytes after LZMA, and an assert is a check the program keeps. The options
were chosen by the wrapped size of the presets' exports (``bench/export_size.py --options``).

A minifier failure stops the export (``ExportError`` naming python-minifier); so does a minified
program that does not compile. That it *behaves* like the readable one is checked by running both
(:mod:`pgolf.export.verify`).

The wrapper is the records' form (SPEC 4.1): the minified source, compressed and base85-encoded,
decompressed and run with ``exec``. The compressor is raw LZMA2 (preset 9 | extreme), as R1081 wraps
its script, or Brotli-11 (window 2**24), as the leaderboard top counts its code (SPEC 5.11), whichever
is smaller, Brotli only when the program imports ``brotli`` anyway (no dependency is added for the
wrapper); Brotli's built-in dictionary of common words gives it about 3% on pgolf's scripts. When the
program ships Triton kernels, the source is first registered with ``linecache`` under ``<pgolf>``
(Triton's JIT reads a kernel's source through ``inspect``; tracebacks show the line too), which costs
about 100 bytes; a program without kernels uses the records' two lines. Its size on disk is the
counted code size.
"""

import base64
import lzma
import re

import brotli
import python_minifier

from pgolf.export.flatten import ExportError

MINIFY_OPTIONS = dict(
    remove_literal_statements=True,
    rename_globals=True,
    rename_locals=True,
    hoist_literals=False,
    remove_asserts=False,
    remove_debug=False,
    combine_imports=True,
    remove_pass=True,
    remove_annotations=True,
    constant_folding=True,
    remove_dead_branches=True,
    remove_explicit_return_none=True,
    remove_builtin_exception_brackets=True,
    convert_posargs_to_args=True,
    prefer_single_line=True,
    remove_object_base=True,
)

# pb=0: source text has no 2- or 4-byte structure for position bits to model (about 0.25% smaller).
WRAP_COMPRESS_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "pb": 0}]
# Decoding a raw LZMA2 stream needs only a dictionary at least as long as the data (lc/lp/pb travel in
# the stream); the default (preset 6, 8 MiB) covers any script, so the stub does not spell them out.
WRAP_DECODE_FILTERS = [{"id": lzma.FILTER_LZMA2}]
WRAP_MAX_SOURCE_BYTES = 8 * 2**20
# Per codec, the records' two lines (decompress and exec: exec takes the bytes as they are), and the
# form with Triton kernels: the source registered in linecache first, so inspect.getsource finds it.
REGISTER_TAIL = b'L.cache["<pgolf>"]=(len(_S),None,_S.splitlines(True),"<pgolf>")\nexec(compile(_S,"<pgolf>","exec"))\n'
WRAPPERS = {
    "lzma": ((b'import lzma,base64\nexec(lzma.decompress(base64.b85decode("',
              b'"),format=lzma.FORMAT_RAW,filters=[{"id":lzma.FILTER_LZMA2}]))\n'),
             (b'import lzma,base64,linecache as L\n_S=lzma.decompress(base64.b85decode("',
              b'"),format=lzma.FORMAT_RAW,filters=[{"id":lzma.FILTER_LZMA2}]).decode()\n' + REGISTER_TAIL)),
    "brotli": ((b'import brotli,base64\nexec(brotli.decompress(base64.b85decode("', b'")))\n'),
               (b'import brotli,base64,linecache as L\n_S=brotli.decompress(base64.b85decode("',
                b'")).decode()\n' + REGISTER_TAIL)),
}
WRAP_BROTLI_OPTIONS = dict(quality=11, lgwin=24)
# An import of brotli anywhere (the compressors import it inside the function that needs it).
IMPORTS_BROTLI = re.compile(r"\bimport\b[^\n;]*\bbrotli\b")


def minify_source(source: str, options: dict | None = None) -> str:
    """``source`` minified by python-minifier; ExportError when it fails or its output does not compile."""
    try:
        minified = python_minifier.minify(source, **(options or MINIFY_OPTIONS))
    except Exception as error:
        raise ExportError(f"python-minifier failed on the exported program ({type(error).__name__}: {error}); "
                          "the export stops rather than ship an unminified or broken script. Report it with "
                          "`pgolf export ... --explain` output.") from None
    try:
        compile(minified, "<minified>", "exec")
    except SyntaxError as error:
        raise ExportError(f"python-minifier produced a program that does not compile ({error}); the export "
                          "stops.") from None
    return minified if minified.endswith("\n") else minified + "\n"


def needs_source_registration(source: str) -> bool:
    """Whether the program runs Triton kernels (which read their own source through linecache)."""
    return "triton" in source


def compressed_with(codec: str, data: bytes) -> bytes:
    if codec == "brotli":
        return brotli.compress(data, **WRAP_BROTLI_OPTIONS)
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=WRAP_COMPRESS_FILTERS)


def decompressed_with(codec: str, payload: bytes) -> bytes:
    if codec == "brotli":
        return brotli.decompress(payload)
    return lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=WRAP_DECODE_FILTERS)


def wrap_codec(source: str) -> str:
    """The wrapper's compressor for ``source``: Brotli when the program imports it and it is smaller."""
    if not IMPORTS_BROTLI.search(source):
        return "lzma"
    data = source.encode("utf-8")
    return "brotli" if len(compressed_with("brotli", data)) < len(compressed_with("lzma", data)) else "lzma"


def wrap_source(source: str, *, register_source: bool | None = None, codec: str | None = None) -> bytes:
    """The self-extracting script that runs ``source`` (registered with linecache when it uses Triton).
    ``codec``: "lzma" or "brotli"; by default :func:`wrap_codec` chooses."""
    data = source.encode("utf-8")
    if len(data) > WRAP_MAX_SOURCE_BYTES:
        raise ValueError(f"{len(data)} bytes of source exceed the wrapper's {WRAP_MAX_SOURCE_BYTES}-byte window.")
    register = needs_source_registration(source) if register_source is None else register_source
    codec = codec or wrap_codec(source)
    head, tail = WRAPPERS[codec][1 if register else 0]
    return head + base64.b85encode(compressed_with(codec, data)) + tail


def unwrap_script(wrapped: bytes) -> str:
    """The source a wrapped script runs (the inverse of :func:`wrap_source`, for checks and reviews)."""
    wrapped = wrapped.rstrip(b"\n") + b"\n"  # the exporter may pad with newlines to settle its own size
    for codec, forms in WRAPPERS.items():
        for head, tail in forms:
            if wrapped.startswith(head) and wrapped.endswith(tail):
                return decompressed_with(codec, base64.b85decode(wrapped[len(head):-len(tail)])).decode("utf-8")
    raise ValueError("not a script written by pgolf export (unexpected wrapper lines).")
