"""Compliance checks the field lacks, as library functions (used by tests and ``pgolf check``).

* score-before-update: from a ``TTTObserver`` record of the real TTT code path (chunk updates, LoRA
  steps and the phases' global SGD alike), every trained target must have been scored by an earlier event;
* causality: changing tokens after position t leaves the log-probabilities up to t bit-identical;
* normalization: the scorer's distribution over the full vocabulary sums to 1 at every position;
* document isolation: of the input features, and (for document-isolated attention) of every score;
* validation isolation and byte accounting.
"""

from dataclasses import dataclass, field

import torch

from pgolf.data.tokenizer import ByteTables
from pgolf.data.val_bytes import TargetBytes, resolve_target_bytes
from pgolf.errors import DataError
from pgolf.eval.ttt import TTTObserver


@dataclass
class ComplianceResult:
    name: str
    passed: bool
    details: list[str] = field(default_factory=list)
    # False when the rule does not apply to this configuration (reported, counted as passed).
    applicable: bool = True

    def as_dict(self) -> dict:
        return {"check": self.name, "passed": self.passed, "applicable": self.applicable, "details": self.details}


TTT_EVENT_NAMES = {"train": "an update", "phase_train": "a phase's global SGD step"}


def check_score_before_update(observer: TTTObserver, num_targets: int) -> ComplianceResult:
    """Every target of every training step was scored by an event before that step."""
    scored = torch.zeros(num_targets, dtype=torch.bool)
    problems: list[str] = []
    for step, (kind, targets) in enumerate(observer.events):
        if kind == "score":
            scored[targets] = True
            continue
        unseen = targets[~scored[targets]]
        if unseen.numel():
            problems.append(f"event {step}: {TTT_EVENT_NAMES.get(kind, kind)} trained on {unseen.numel()} targets "
                            f"not scored yet (first: target {int(unseen[0])})")
    return ComplianceResult("score_before_update", not problems, problems[:10])


def _log_probs(model: torch.nn.Module, tokens_BT: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model.forward_logits(tokens_BT).float(), dim=-1)


def check_causality(model: torch.nn.Module, tokens_BT: torch.Tensor, cut: int, *, seed: int = 0) -> ComplianceResult:
    """Replace every token after position ``cut``; log-probabilities at positions <= ``cut`` must not move."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.forward_logits(tokens_BT[:, :1]).size(-1)
    perturbed = tokens_BT.clone()
    tail = perturbed[:, cut + 1:]
    tail.copy_((tail + torch.randint(1, vocab, tail.shape, generator=generator).to(tail.device)) % vocab)
    before, after = _log_probs(model, tokens_BT)[:, : cut + 1], _log_probs(model, perturbed)[:, : cut + 1]
    moved = (before != after).any(dim=-1).nonzero()
    details = [f"position {int(p)} of row {int(r)} changed when only later tokens changed" for r, p in moved[:10]]
    return ComplianceResult("causality", not details, details)


def check_normalization(model: torch.nn.Module, tokens_T: torch.Tensor, *, tolerance: float = 1e-3,
                        vocab_batch: int = 256) -> ComplianceResult:
    """The scorer's probabilities of every possible target sum to 1 at every position.

    It asks the scoring path itself (``model(x, y, reduction="none")``, the per-token loss that BPB
    sums) for the loss of each vocabulary id as the target, so a scorer that tilts, mixes or rescales
    anything after the softmax is caught, not only the logits.
    """
    vocab = model.forward_logits(tokens_T[None, :1]).size(-1)
    totals = torch.zeros(tokens_T.numel(), dtype=torch.float64)
    with torch.no_grad():
        for first in range(0, vocab, vocab_batch):
            ids = torch.arange(first, min(first + vocab_batch, vocab), device=tokens_T.device)
            x = tokens_T[None, :].expand(ids.numel(), -1)
            y = ids[:, None].expand(-1, tokens_T.numel())
            totals += torch.exp(-model(x, y, reduction="none").double()).sum(dim=0).cpu()
    worst = float((totals - 1).abs().max())
    passed = worst <= tolerance
    return ComplianceResult("normalization", passed, [] if passed else [f"probabilities sum to 1 +- {worst:.2e}"])


DOCUMENT_ISOLATION_RULE = "rule: no score may depend on an earlier document (document isolation)"


def _changed_previous_document(tokens_T: torch.Tensor, bos_id: int, vocab: int, seed: int):
    """(first document start after position 0, tokens with everything before it replaced) or None."""
    starts = (tokens_T == bos_id).nonzero().flatten()
    starts = starts[starts > 0]
    if not starts.numel():
        return None
    boundary = int(starts[0])
    generator = torch.Generator().manual_seed(seed)
    changed = tokens_T.clone()
    noise = torch.randint(0, vocab, (boundary,), generator=generator).to(changed.device)
    noise[noise == bos_id] = (bos_id + 1) % vocab  # keep the sample's document structure
    changed[:boundary] = noise
    return boundary, changed


def check_input_document_isolation(model: torch.nn.Module, tokens_T: torch.Tensor, bos_id: int, *,
                                   seed: int = 0) -> ComplianceResult:
    """Changing the previous document leaves the input features (``model.embed``) of the next one unchanged.

    This isolates what looks back *before* attention (SmearGate and the like), where a leak across BOS
    is a bug; attention itself may see earlier documents in a packed window, as in every record.
    """
    found = _changed_previous_document(tokens_T, bos_id, model.tok_emb.num_embeddings, seed)
    if found is None:
        return ComplianceResult("input_document_isolation", True, ["no document boundary in the sample: not tested"])
    boundary, changed = found
    with torch.no_grad():
        before, after = model.embed(tokens_T[None])[0, boundary:], model.embed(changed[None])[0, boundary:]
    moved = (before != after).any(dim=-1).nonzero().flatten()
    details = [f"input features at position {boundary + int(p)} (document starting at {boundary}) changed when "
               "only the previous document changed" for p in moved[:10]]
    return ComplianceResult("input_document_isolation", not details, [DOCUMENT_ISOLATION_RULE] + details if details else [])


def check_model_document_isolation(model: torch.nn.Module, tokens_T: torch.Tensor, bos_id: int, *,
                                   seed: int = 0) -> ComplianceResult:
    """Changing the previous document leaves every score from the next document on bit-identical.

    The scores are the scoring path's per-token losses (``model(x, y, reduction="none")``) of every
    target from the document start on. It holds for document-isolated attention (``DOC_ISOLATED_ATTENTION=1``);
    ordinary attention sees earlier documents of a packed window by design.
    """
    name = "model_document_isolation"
    vocab = model.forward_logits(tokens_T[None, :1]).size(-1)
    found = _changed_previous_document(tokens_T, bos_id, vocab, seed)
    if found is None:
        return ComplianceResult(name, True, ["no document boundary in the sample: not tested"])
    boundary, changed = found
    with torch.no_grad():
        before = model(tokens_T[None, :-1], tokens_T[None, 1:], reduction="none")[0, boundary:]
        after = model(changed[None, :-1], changed[None, 1:], reduction="none")[0, boundary:]
    moved = (before != after).nonzero().flatten()
    details = [f"the score of target {boundary + int(p)} (document starting at {boundary}) changed by "
               f"{float((after[p] - before[p]).abs()):.3g} nats when only the previous document changed"
               for p in moved[:10]]
    return ComplianceResult(name, not details, ([DOCUMENT_ISOLATION_RULE] + details) if details else
                            [f"{before.numel()} scores after the boundary at {boundary} unchanged"])


def check_validation_refused(loader_classes: dict, val_files: list, vocab_size: int) -> ComplianceResult:
    """Every training (and calibration) loader refuses a validation shard."""
    details = []
    for name, loader_class in loader_classes.items():
        try:
            loader_class(val_files[:1], 0, 1, torch.device("cpu"), vocab_size=vocab_size)
        except DataError:
            continue
        details.append(f"the {name!r} training loader accepted validation file {val_files[0]}")
    return ComplianceResult("validation_isolation", not details, details)


def check_byte_accounting(tokens: torch.Tensor, decode, target_bytes: ByteTables | TargetBytes,
                          bos_id: int, *, raw_document_bytes: bool = False) -> ComplianceResult:
    """Bytes the evaluator counts for each complete document == UTF-8 length of its decoded text.

    ``decode`` maps a list of ids to the text they stand for (SentencePiece ``decode``; for CaseOps
    data, ``decode`` followed by the inverse transform, since the byte sidecars count the text with the
    case transform undone). ``target_bytes``: what the evaluator divides by (the validation data's
    per-target bytes, whose first targets are those of ``tokens``), or byte tables. Only documents that
    start and end inside ``tokens`` are audited; the BOS targets count 0 bytes.

    ``raw_document_bytes``: the counts are the raw documents' bytes (CaseOps sidecars of the ``original``
    convention), which differ from the decoded text wherever SentencePiece's normaliser changed the raw
    text, and the raw documents are not at hand. A document whose count equals its decoded text's bytes
    is audited; one whose count differs is skipped and reported (only the raw documents can settle it),
    not failed; with no document audited at all the check is reported as not applicable.
    """
    resolved = resolve_target_bytes(target_bytes, tokens)
    counted = resolved.per_target[: tokens.numel() - 1]  # bytes of target i+1
    starts = (tokens == bos_id).nonzero().flatten().tolist()
    details, audited, total, skipped, skipped_bytes = [], 0, 0, 0, 0
    for begin, end in zip(starts[:-1], starts[1:]):
        document = tokens[begin + 1: end].tolist()
        expected = len(decode(document).encode("utf-8"))
        got = int(counted[begin: end - 1].sum()) if end - 1 > begin else 0
        if got != expected and raw_document_bytes:
            skipped, skipped_bytes = skipped + 1, skipped_bytes + got - expected
            continue
        audited, total = audited + 1, total + expected
        if got != expected:
            details.append(f"document at token {begin}: counted {got} bytes, decoded text has {expected}")
    passed = not details and audited > 0
    if not audited and not skipped:
        details.append("no complete document in the audited span")
    summary = [f"{audited} documents, {total} bytes audited (bytes from the {resolved.source})"]
    if raw_document_bytes:
        summary.append(f"{skipped} documents skipped: the counts are raw-document bytes ('original' convention) and "
                       f"theirs differ from the decoded text ({skipped_bytes:+} bytes in all), which only the raw "
                       "documents can confirm (pgolf data verify DATA_DIR --docs FILE.jsonl)" if skipped else
                       "no document skipped: every count equals its decoded text's bytes, although the counts are "
                       "raw-document bytes ('original' convention)")
        if not audited and skipped:
            return ComplianceResult("byte_accounting", True, details[:10] + summary, applicable=False)
    return ComplianceResult("byte_accounting", passed, details[:10] + summary)
