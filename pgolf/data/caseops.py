"""CaseOps: the lossless case transform ``lossless_caps_caseops_v1`` and its byte sidecar (SPEC 5.10).

The transform lowers ASCII letters and records the case with four private-use operator characters, so
the tokenizer spends no vocabulary on "The"/"the"/"THE" variants. It works on maximal runs of ASCII
letters (``[A-Za-z]+``); everything else, non-ASCII letters included, passes through untouched:

* all-lowercase run: unchanged (``the`` -> ``the``);
* all-uppercase run of two letters or more: ALLCAPS + lowered run (``NASA`` -> ALLCAPS ``nasa``);
* any other run: TITLE if the first letter is upper case, then the lowered run with CAPNEXT before
  every later upper-case letter. TitleCase is the plain case of this (``Hello`` -> TITLE ``hello``),
  and so is a single capital (``I`` -> TITLE ``i``: ALLCAPS needs two letters);
  ``iPhone`` -> ``i`` CAPNEXT ``phone``; ``McDonald`` -> TITLE ``mc`` CAPNEXT ``donald``;
  ``ABCdef`` -> TITLE ``a`` CAPNEXT ``b`` CAPNEXT ``cdef``;
* an operator character already in the input is written as ESC + that character.

Decoding undoes exactly that, so ``decode_caseops(encode_caseops(t)) == t`` for every string ``t``.

The byte sidecar gives, per token of a transformed document, how many bytes of text with the case
transform undone it stands for: the operators are extra characters the transform invented (charging
them would flatter the score), and an escaped literal operator is three real bytes. Which text is a
choice, the dataset's byte convention (``CASEOPS_BYTE_CONVENTIONS``, recorded in its manifest):

* ``decoded`` (the default, the challenge's convention, SPEC 2.8): the bytes of the text the tokens
  DECODE to, ``decode_caseops(sp.decode(ids))``, i.e. SentencePiece's normalised text with the case
  transform undone. :func:`caseops_original_byte_counts` computes it from token ids alone: each
  piece's surface counts its UTF-8 bytes with operators at 0. It is the rule of the record's exporter
  (its sidecar, token for token) and counts what the byte tables of every other tokenizer count, so
  scores are comparable with the leaderboard's;
* ``original``: the exact bytes of the raw document. :func:`caseops_document_byte_counts` also reads
  the text and maps every token back onto the raw characters through the normaliser's offsets:
  characters the normaliser deletes or rewrites (``nmt_nfkc`` collapses whitespace, turns U+FFFD into
  a space and drops trailing spaces, ``\x01`` vanishes) are charged to the token before them (the first
  token, at the start), so the counts of a document sum to its UTF-8 length. On raw web text that is
  more bytes than the challenge counts, so such scores are NOT comparable with the leaderboard's.

The two agree wherever the normaliser changes nothing; docs/caseops.md names the one token of the
golden sample where they differ.
"""

import re
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm

from pgolf.data.tokenizer import SENTENCEPIECE_SPACE
from pgolf.errors import DataError

CASEOPS_TRANSFORM_NAME = "lossless_caps_caseops_v1"
CASEOPS_TITLE = "\ue001"  # upper-case the next letter
CASEOPS_ALLCAPS = "\ue002"  # upper-case the whole letter run that follows
CASEOPS_CAPNEXT = "\ue003"  # upper-case the next letter (a capital inside a run)
CASEOPS_ESC = "\ue004"  # the next character is literal text, not an operator
CASEOPS_OPERATORS = (CASEOPS_TITLE, CASEOPS_ALLCAPS, CASEOPS_CAPNEXT, CASEOPS_ESC)
CASEOPS_BOS_ID = 1
# The byte conventions of a CaseOps sidecar (see the module docstring); the manifest names the one used.
CASEOPS_BYTES_DECODED = "decoded"  # bytes of the decoded text, case transform undone (the challenge's)
CASEOPS_BYTES_ORIGINAL = "original"  # exact bytes of the raw document
CASEOPS_BYTE_CONVENTIONS = (CASEOPS_BYTES_DECODED, CASEOPS_BYTES_ORIGINAL)
CASEOPS_DEFAULT_BYTE_CONVENTION = CASEOPS_BYTES_DECODED
CASEOPS_BYTE_CONVENTION_KEY = "val_bytes_convention"  # the manifest's dataset entry names it here

_ENCODE_PATTERN = re.compile("[A-Za-z]+|[\ue001-\ue004]")
# Leftmost-first alternatives: an escape pair, ALLCAPS with its run, TITLE/CAPNEXT with its letter,
# and finally any operator left over, which has nothing valid to act on (malformed input).
_DECODE_PATTERN = re.compile("\ue004(.)|\ue002([a-z]+)|[\ue001\ue003]([a-z])|[\ue001-\ue004]", re.DOTALL)
_OPERATOR_CODEPOINTS = np.array([ord(op) for op in CASEOPS_OPERATORS], dtype=np.uint32)
_ESC_CODEPOINT = ord(CASEOPS_ESC)


# ----------------------------------------------------------------------------------------- transform


def _encode_letter_run(run: str) -> str:
    """Encode one maximal run of ASCII letters."""
    if run.islower():
        return run
    if run.isupper() and len(run) >= 2:
        return CASEOPS_ALLCAPS + run.lower()
    first = CASEOPS_TITLE + run[0].lower() if run[0].isupper() else run[0]
    rest = "".join(CASEOPS_CAPNEXT + c.lower() if c.isupper() else c for c in run[1:])
    return first + rest


def _encode_match(match: re.Match) -> str:
    text = match.group()
    if text in CASEOPS_OPERATORS:  # a literal operator character of the input
        return CASEOPS_ESC + text
    return _encode_letter_run(text)


def encode_caseops(text: str) -> str:
    """Apply ``lossless_caps_caseops_v1`` to ``text``; :func:`decode_caseops` inverts it exactly."""
    return _ENCODE_PATTERN.sub(_encode_match, text)


def decode_caseops(text: str, *, strict: bool = True) -> str:
    """Invert :func:`encode_caseops`.

    An operator with nothing valid to act on (TITLE or CAPNEXT not before a lower-case ASCII letter,
    ALLCAPS not before one, ESC at the very end) cannot come out of the encoder: with ``strict`` it
    raises ValueError naming the position; with ``strict=False`` (model samples) it is dropped.
    """

    def replace(match: re.Match) -> str:
        literal, run, letter = match.groups()
        if literal is not None:
            return literal
        if run is not None:
            return run.upper()
        if letter is not None:
            return letter.upper()
        if strict:
            where = match.start()
            raise ValueError(f"malformed CaseOps text: operator U+{ord(match.group()):04X} at index {where} has no "
                             f"letter (or, for ESC, no character) to act on: {text[where:where + 12]!r}")
        return ""

    return _DECODE_PATTERN.sub(replace, text)


# ------------------------------------------------------------------------------- byte conventions


def require_caseops_byte_convention(convention: str) -> str:
    """``convention`` if it is one of ``CASEOPS_BYTE_CONVENTIONS``, else a DataError that explains both."""
    if convention not in CASEOPS_BYTE_CONVENTIONS:
        raise DataError(f"unknown CaseOps byte convention {convention!r}: use {CASEOPS_BYTES_DECODED!r} (the default, "
                        "the challenge's: the bytes of the decoded text with the case transform undone, comparable "
                        f"with the leaderboard) or {CASEOPS_BYTES_ORIGINAL!r} (the exact bytes of the raw documents, "
                        "scores not comparable with the leaderboard's).")
    return convention


def caseops_decoded_text(token_ids, sp: spm.SentencePieceProcessor) -> str:
    """The text a CaseOps document's ids stand for under the ``decoded`` convention: the tokens decoded by
    SentencePiece (its normalised text) with the case transform undone. BOS and other control ids
    decode to nothing. Its UTF-8 length is what :func:`caseops_original_byte_counts` sums to."""
    return decode_caseops(sp.decode(np.asarray(token_ids, dtype=np.int64).reshape(-1).tolist()), strict=False)


# -------------------------------------------------------------------------- sidecar from token ids


@dataclass(frozen=True)
class CaseOpsPieceBytes:
    """Per-id tables of a CaseOps SentencePiece model for the byte sidecar (index = token id).

    ``surface_bytes``: original UTF-8 bytes of the piece's surface with operator characters at 0
    (``▁`` is one space byte, control/unknown pieces 0, a byte-fallback piece 1 until its neighbours
    are seen). ``operator_pieces``: id -> surface, for the pieces that contain an operator character;
    only these need the ESC state, since a literal operator after ESC is three real bytes.
    ``byte_values``: the byte of a byte-fallback piece ``<0xNN>``, -1 for other ids.
    ``normalized_bytes``: UTF-8 bytes the piece occupies in SentencePiece's normalised text.
    """

    surface_bytes: np.ndarray
    operator_pieces: dict
    byte_values: np.ndarray
    normalized_bytes: np.ndarray


def _missing_operator_pieces(sp: spm.SentencePieceProcessor) -> list[str]:
    return [f"U+{ord(op):04X}" for op in CASEOPS_OPERATORS
            if sp.is_unknown(sp.piece_to_id(op)) or sp.id_to_piece(sp.piece_to_id(op)) != op]


def is_caseops_tokenizer(sp: spm.SentencePieceProcessor) -> bool:
    """Whether ``sp`` has the four CaseOps operators as pieces (a tokenizer for transformed text)."""
    return not _missing_operator_pieces(sp)


def _require_operator_pieces(sp: spm.SentencePieceProcessor) -> None:
    """Operators must be whole pieces; split into byte pieces they would be counted as 3 real bytes."""
    missing = _missing_operator_pieces(sp)
    if missing:
        raise DataError(f"the tokenizer has no piece for the CaseOps operators {missing}; it is not a CaseOps "
                        "tokenizer (train it with the four operators as user_defined_symbols, or use the record's "
                        "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model).")


def build_caseops_piece_bytes(sp: spm.SentencePieceProcessor) -> CaseOpsPieceBytes:
    """Build the per-id byte tables of the CaseOps tokenizer ``sp`` (build once, reuse per document)."""
    _require_operator_pieces(sp)
    size = sp.vocab_size()
    surface = np.zeros(size, dtype=np.int64)
    normalized = np.zeros(size, dtype=np.int64)
    byte_values = np.full(size, -1, dtype=np.int64)
    operator_pieces = {}
    for token_id in range(size):
        if sp.is_control(token_id) or sp.is_unknown(token_id) or sp.is_unused(token_id):
            continue  # no text (an unknown piece's text is lost; byte fallback keeps it from occurring)
        piece = sp.id_to_piece(token_id)
        if sp.is_byte(token_id):
            surface[token_id] = normalized[token_id] = 1
            byte_values[token_id] = int(piece[1:-1], 16)  # "<0xNN>"
            continue
        normalized[token_id] = len(piece.encode("utf-8"))
        if any(op in piece for op in CASEOPS_OPERATORS):
            operator_pieces[token_id] = piece
        surface[token_id] = sum(_surface_char_bytes(c) for c in piece if c not in CASEOPS_OPERATORS)
    return CaseOpsPieceBytes(surface_bytes=surface, operator_pieces=operator_pieces, byte_values=byte_values,
                             normalized_bytes=normalized)


def _surface_char_bytes(char: str) -> int:
    return 1 if char == SENTENCEPIECE_SPACE else len(char.encode("utf-8"))


def _operator_piece_bytes(piece: str, esc_pending: bool) -> tuple[int, bool]:
    """Original bytes of a piece holding operator characters, and whether an ESC is left pending."""
    total = 0
    for char in piece:
        if esc_pending:
            total += _surface_char_bytes(char)  # escaped: literal text, whatever the character
            esc_pending = False
        elif char == CASEOPS_ESC:
            esc_pending = True
        elif char not in CASEOPS_OPERATORS:
            total += _surface_char_bytes(char)
    return total, esc_pending


def _caseops_utf8_sequence_length(lead: int) -> int:
    """Bytes of the UTF-8 character that starts with byte ``lead``; 1 for ASCII and stray bytes."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 1


def _charge_byte_pieces(ids: np.ndarray, counts: np.ndarray, byte_values: np.ndarray) -> None:
    """Give a character spelled by byte-fallback pieces all its bytes on the piece that completes it.

    That is the record's convention (the text grows only when a character is complete, so the leading
    bytes count 0: ``<0xE2><0x80><0x98>`` -> 0, 0, 3). A sequence cut short, which encoding valid text
    never yields, keeps its bytes on its last piece, so the total is still the number of bytes.
    """
    positions = np.flatnonzero(byte_values[ids] >= 0).tolist()
    start = 0
    while start < len(positions):
        length = _caseops_utf8_sequence_length(int(byte_values[ids[positions[start]]]))
        end = start + 1  # one past the last piece of this character
        while (end < len(positions) and end - start < length and positions[end] == positions[end - 1] + 1
               and 0x80 <= byte_values[ids[positions[end]]] <= 0xBF):
            end += 1
        counts[positions[start:end]] = 0
        counts[positions[end - 1]] = end - start
        start = end


def caseops_original_byte_counts(token_ids, sp_or_table) -> np.ndarray:
    """Original (pre-transform) UTF-8 bytes of each token, from the token ids alone (int64 array).

    ``token_ids``: ids of one or more whole transformed documents (BOS included or not; BOS counts 0).
    ``sp_or_table``: the CaseOps SentencePiece model or its :func:`build_caseops_piece_bytes` tables.
    Operator characters count 0, except a literal one after ESC (three bytes); the ESC state is carried
    across pieces, because ESC is a piece of its own. A character spelled by byte-fallback pieces counts
    all its bytes on the piece that completes it. This is the ``decoded`` convention and the record
    exporter's rule (it reproduces its sidecar token for token on the golden sample): a document's
    counts sum to ``len(caseops_decoded_text(ids, sp).encode())``. Characters of the raw document that
    SentencePiece's normaliser deleted or changed are not in the decoded text and not counted; only
    :func:`caseops_document_byte_counts` (the ``original`` convention) can see them.
    """
    table = sp_or_table if isinstance(sp_or_table, CaseOpsPieceBytes) else build_caseops_piece_bytes(sp_or_table)
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= table.surface_bytes.size):
        raise DataError(f"token ids must lie in [0, {table.surface_bytes.size}) for this tokenizer, got "
                        f"{int(ids.min())}..{int(ids.max())}: these tokens come from another tokenizer.")
    counts = table.surface_bytes[ids].copy()
    _charge_byte_pieces(ids, counts, table.byte_values)
    # Only operator pieces can differ from the table. A pending ESC before an ordinary piece changes
    # nothing: that piece's first character is literal text and already counted as such.
    escaped_position = -1
    for position in np.flatnonzero(np.isin(ids, list(table.operator_pieces))).tolist():
        piece = table.operator_pieces[int(ids[position])]
        counts[position], esc_pending = _operator_piece_bytes(piece, position == escaped_position)
        escaped_position = position + 1 if esc_pending else -1
    return counts


# ------------------------------------------------------------------ exact sidecar from the text


def _caseops_codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def _caseops_utf8_lengths(codepoints: np.ndarray) -> np.ndarray:
    return 1 + (codepoints >= 0x80).astype(np.int64) + (codepoints >= 0x800) + (codepoints >= 0x10000)


def _original_char_bytes(transformed: str) -> np.ndarray:
    """Original UTF-8 bytes behind each character of a transformed text: operators 0, all else its length.

    Lowered letters keep their one byte; an escaped literal operator keeps its three. Operator
    characters are rare, so the ESC state is walked over their positions only.
    """
    codepoints = _caseops_codepoints(transformed)
    weights = _caseops_utf8_lengths(codepoints)
    escaped_position = -1
    for position in np.flatnonzero(np.isin(codepoints, _OPERATOR_CODEPOINTS)).tolist():
        if position == escaped_position:
            continue  # a literal operator: keeps its bytes
        weights[position] = 0
        if codepoints[position] == _ESC_CODEPOINT:
            escaped_position = position + 1
    return weights


def _normalized_char_weights(transformed: str, sp: spm.SentencePieceProcessor) -> tuple[str, np.ndarray]:
    """SentencePiece's normalised text and the original bytes each of its characters stands for.

    The normaliser reports, per normalised character, where it starts in the input. Character i covers
    the input from its start to the next one's; the first also takes anything deleted before it and the
    last anything deleted after it, so the weights always sum to the whole input's original bytes.
    """
    normalized, offsets = sp.normalize(transformed, with_offsets=True)
    if len(offsets) != len(normalized) + 1:  # this code expects one character offset per character
        raise DataError(f"sentencepiece {spm.__version__} returned {len(offsets)} normaliser offsets for "
                        f"{len(normalized)} characters; the exact CaseOps sidecar needs character offsets "
                        "(sentencepiece 0.2.x).")
    prefix = np.concatenate([[0], np.cumsum(_original_char_bytes(transformed))])
    cuts = np.maximum.accumulate(np.clip(np.asarray(offsets, dtype=np.int64), 0, len(transformed)))
    cuts[0], cuts[-1] = 0, len(transformed)
    return normalized, np.diff(prefix[cuts])


def _weights_on_last_bytes(normalized: str, char_weights: np.ndarray) -> np.ndarray:
    """Per normalised UTF-8 byte: each character's weight on its last byte, 0 on the others.

    A character spelled by byte-fallback pieces is thus charged to the piece that completes it, the
    convention of the record's sidecar (and of :func:`caseops_original_byte_counts`).
    """
    lengths = _caseops_utf8_lengths(_caseops_codepoints(normalized))
    weights = np.zeros(int(lengths.sum()), dtype=np.int64)
    weights[np.cumsum(lengths) - 1] = char_weights
    return weights


def caseops_document_byte_counts(transformed: str, token_ids, sp: spm.SentencePieceProcessor,
                                 table: CaseOpsPieceBytes | None = None) -> np.ndarray:
    """Exact raw-document bytes of each token of ``sp.encode(transformed)`` (no BOS), as an int64 array:
    the ``original`` byte convention.

    The tokens' pieces tile SentencePiece's normalised text; each normalised character is mapped back
    to the input characters it came from. Unlike :func:`caseops_original_byte_counts`, characters the
    normaliser deleted or rewrote are charged too, so the sum is the original document's UTF-8 length
    whenever the document yields at least one token.
    """
    table = table if table is not None else build_caseops_piece_bytes(sp)
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    normalized, char_weights = _normalized_char_weights(transformed, sp)
    piece_bytes = table.normalized_bytes[ids]
    if int(piece_bytes.sum()) != len(normalized.encode("utf-8")):
        raise DataError(f"the {ids.size} tokens cover {int(piece_bytes.sum())} bytes of normalised text but it has "
                        f"{len(normalized.encode('utf-8'))}: they are not sp.encode() of this text with this "
                        "tokenizer.")
    byte_prefix = np.concatenate([[0], np.cumsum(_weights_on_last_bytes(normalized, char_weights))])
    ends = np.cumsum(piece_bytes)
    return byte_prefix[ends] - byte_prefix[ends - piece_bytes]


def encode_caseops_document(text: str, sp: spm.SentencePieceProcessor, table: CaseOpsPieceBytes | None = None, *,
                            byte_convention: str = CASEOPS_DEFAULT_BYTE_CONVENTION) -> tuple[list[int], list[int]]:
    """Shard ids ``[BOS] + sp.encode(encode_caseops(text))`` and their byte counts (BOS 0).

    The ids are what the record's exporter writes. ``byte_convention`` ``decoded`` (the default, the
    challenge's): the counts are the record's and sum to the UTF-8 bytes of the decoded text,
    ``caseops_decoded_text(ids, sp)``; ``original``: they sum to ``len(text.encode())``, the raw
    document (a document with no tokens at all, e.g. only spaces, has nowhere to put its bytes and
    counts 0). Pass ``table`` (from :func:`build_caseops_piece_bytes`) when encoding many documents.
    """
    require_caseops_byte_convention(byte_convention)
    table = table if table is not None else build_caseops_piece_bytes(sp)
    transformed = encode_caseops(text)
    ids = sp.encode(transformed)
    if byte_convention == CASEOPS_BYTES_ORIGINAL:
        counts = caseops_document_byte_counts(transformed, ids, sp, table)
    else:
        counts = caseops_original_byte_counts(ids, table)
    return [CASEOPS_BOS_ID] + ids, [0] + counts.tolist()
