"""``pgolf check RUN_DIR``: the compliance checks on a finished run, with a JSON receipt (tooling).

Each check runs the run's own code path on its own artifact and validation data:

1. score-before-update: the run's score-first TTT (``TTT_MODE`` full, or batched LoRA with its phases)
   on a validation prefix, recorded by ``TTTObserver``;
2. causality: later tokens changed, earlier log-probabilities bit-identical;
3. normalization: the scoring path's probabilities of every vocabulary id sum to 1;
4. input document isolation: the previous document does not reach the next one's input features;
5. model document isolation: with ``DOC_ISOLATED_ATTENTION=1``, the previous document does not reach
   any score of the next one (not applicable otherwise: attention crosses documents by design);
6. validation isolation: every training loader refuses validation shards, and the run's training and
   validation files are disjoint by path and content;
7. byte accounting: counted bytes == UTF-8 length of the decoded text, document by document (with
   byte sidecars, CaseOps: the sidecar's bytes == the decoded and inverse-transformed text's; sidecars
   of the ``original`` convention count raw documents, which a run does not have: documents whose
   count differs from the decoded text are skipped and counted in the receipt);
8. budgets: training (with GPTQ calibration) and evaluation time against their caps; over a cap on a
   machine other than the challenge's 8xH100 is ``unverified`` rather than PASS or FAIL.

The receipt goes to ``RUN_DIR/check.json`` (``check_2.json``, ... if one exists: never overwritten).
"""

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from pgolf.commands.configuration import load_run_dir_config, locate_run_data
from pgolf.config import Config, parse_cli_overrides
from pgolf.data.caseops import CASEOPS_BYTES_ORIGINAL, decode_caseops, is_caseops_tokenizer
from pgolf.data.loader import assert_disjoint_splits
from pgolf.data.tokenizer import load_sentencepiece
from pgolf.data.val_bytes import TARGET_BYTES_FROM_SIDECARS, dataset_byte_convention
from pgolf.errors import PgolfError
from pgolf.exp.logs import NO_REPORT_HINT
from pgolf.eval.compliance import (ComplianceResult, check_byte_accounting, check_causality,
                                   check_input_document_isolation, check_model_document_isolation,
                                   check_normalization, check_score_before_update, check_validation_refused)
from pgolf.eval.phases import evaluation_window
from pgolf.eval.ttt import TTTObserver, evaluate_ttt_bpb
from pgolf.eval.ttt_lora import document_spans, evaluate_lora_ttt_bpb
from pgolf.fsutil import require_writable_directory, write_text_atomic
from pgolf.data.run_data import TRAIN_LOADERS, prepare_validation_data
from pgolf.quant.model_artifact import load_artifact_into_fresh_model
from pgolf.runtime import Runtime
from pgolf.train.resume import read_json_file

CHECK_BYTE_AUDIT_TOKENS = 1 << 20
CHECK_NORMALIZATION_TOKENS = 16
CHECK_TTT_CHUNKS = 4
CHECK_LORA_TOKENS = 4096  # validation prefix of the LoRA check (at least two windows): a few documents
# The machine the challenge times training and evaluation on (report.json's env says where a run ran).
CHALLENGE_GPU, CHALLENGE_GPU_COUNT = "H100", 8
# The challenge's training cap, for a run that had none (MAX_WALLCLOCK_SECONDS=0).
CHALLENGE_TRAIN_SECONDS = 600.0
STOP_TOLERANCE_SECONDS = 1.0  # the rank-agreed stop lands within one step of the cap
CROSSING_ATTENTION = "not applicable: attention crosses documents by design (DOC_ISOLATED_ATTENTION=0)"


def load_run(run_dir: Path, overrides: list[str]) -> tuple[Config, dict]:
    """The run's config (with overrides) and its report."""
    config_path, report_path = run_dir / "config.json", run_dir / "report.json"
    if not config_path.is_file():
        raise PgolfError(f"{config_path} not found; RUN_DIR must be a finished run written by `pgolf train` or by "
                         "an exported train_gpt.py.")
    if not report_path.is_file():
        raise PgolfError(f"{report_path} not found; RUN_DIR must be a finished run. {NO_REPORT_HINT}")
    items = parse_cli_overrides(overrides)
    cfg = locate_run_data(load_run_dir_config(run_dir, items), run_dir, items)
    return cfg, read_json_file(report_path, "restore it from a copy of the run")


def find_artifact(run_dir: Path, report: dict) -> Path:
    """The artifact inside ``run_dir``: the file the report names, looked up in ``run_dir/artifact/`` (the
    report's ``artifact_path`` is where the run wrote it, another directory once the run is copied or
    moved), else the single ``artifact/final_model.*.ptz``."""
    name = report.get("artifact_file") or Path(str(report.get("artifact_path") or "")).name
    if name and (run_dir / "artifact" / name).is_file():
        return run_dir / "artifact" / name
    found = sorted((run_dir / "artifact").glob("final_model.*.ptz"))
    if len(found) != 1:
        raise PgolfError(f"expected one artifact/final_model.*.ptz in {run_dir}, found {len(found)}.")
    return found[0]


def check_score_first_ttt(cfg: Config, model_factory, val_tokens: torch.Tensor, target_bytes,
                          runtime: Runtime) -> ComplianceResult:
    """Run the run's TTT mode on a validation prefix of a few chunks and check its record."""
    if cfg.ttt.ttt_mode == "lora":
        return check_score_first_lora_ttt(cfg, model_factory, val_tokens, target_bytes, runtime)
    window = evaluation_window(cfg)
    available = val_tokens.numel() - 1
    chunk = max(window, min(cfg.ttt.ttt_chunk_tokens, available // CHECK_TTT_CHUNKS))
    prefix = val_tokens[: min(available, CHECK_TTT_CHUNKS * chunk) + 1]
    ttt_cfg = dataclasses.replace(cfg.ttt, ttt_chunk_tokens=chunk, ttt_epochs=1)
    observer = TTTObserver()
    evaluate_ttt_bpb(model_factory(), prefix, ttt_cfg, window=window, stride=cfg.eval.eval_stride,
                     batch_windows=cfg.eval.eval_batch_windows, target_bytes=target_bytes, runtime=runtime,
                     observer=observer)
    result = check_score_before_update(observer, prefix.numel() - 1)
    result.details.append(f"{prefix.numel() - 1} targets in {CHECK_TTT_CHUNKS} chunks of {chunk}")
    return result


def check_score_first_lora_ttt(cfg: Config, model_factory, val_tokens: torch.Tensor, target_bytes,
                               runtime: Runtime) -> ComplianceResult:
    """Batched LoRA TTT, with the run's phases, on a validation prefix of a few windows: batches and
    phase sizes shrunk so that several batches run and every phase fires inside the prefix."""
    window = evaluation_window(cfg)
    prefix = val_tokens[: min(val_tokens.numel() - 1, max(CHECK_LORA_TOKENS, 2 * window)) + 1].to(torch.int64)
    num_documents = len(document_spans(prefix, cfg.model.bos_token_id))
    ttt_cfg = dataclasses.replace(
        cfg.ttt, ttt_lora_chunk_tokens=min(cfg.ttt.ttt_lora_chunk_tokens, window),
        ttt_chunk_tokens=max(window, min(cfg.ttt.ttt_chunk_tokens, prefix.numel() // 8)),
        ttt_lora_batch_docs=max(1, min(cfg.ttt.ttt_lora_batch_docs, num_documents // 4)),
        ttt_phase_prefix_docs=max(1, min(cfg.ttt.ttt_phase_prefix_docs, num_documents // 2)))
    observer = TTTObserver()
    evaluate_lora_ttt_bpb(model_factory(), prefix, ttt_cfg, window=window, bos_id=cfg.model.bos_token_id,
                          target_bytes=target_bytes, runtime=runtime, observer=observer)
    result = check_score_before_update(observer, prefix.numel() - 1)
    phase_steps = sum(kind == "phase_train" for kind, _ in observer.events)
    result.details.append(f"LoRA TTT: {prefix.numel() - 1} targets, {num_documents} documents in batches of "
                          f"{ttt_cfg.ttt_lora_batch_docs}, {ttt_cfg.ttt_phases} phases ({phase_steps} global SGD steps)")
    return result


def check_document_isolation_of_scores(cfg: Config, model, span: torch.Tensor, bos: int) -> ComplianceResult:
    """The model-level document isolation check where attention is document-isolated; else not applicable."""
    if not cfg.model.doc_isolated_attention:
        return ComplianceResult("model_document_isolation", True, [CROSSING_ATTENTION], applicable=False)
    return check_model_document_isolation(model, span, bos)


def span_around_a_document_start(tokens: torch.Tensor, bos: int, length: int) -> torch.Tensor:
    """``length`` tokens with the first document start after position 0 in their middle."""
    head = tokens[:CHECK_BYTE_AUDIT_TOKENS].to(torch.int64)
    starts = (head == bos).nonzero().flatten()
    starts = starts[starts > 0]
    middle = int(starts[0]) if starts.numel() else length // 2
    begin = max(0, middle - length // 2)
    return head[begin: begin + length]


def audit_decoder(sp, data):
    """ids -> the text the evaluator's bytes must measure: the decoded text, and with byte sidecars from
    a CaseOps tokenizer the decoded text with the case transform undone (the original text)."""
    if data.target_bytes.source == TARGET_BYTES_FROM_SIDECARS and is_caseops_tokenizer(sp):
        return lambda ids: decode_caseops(sp.decode(ids), strict=False)
    return sp.decode


def audit_byte_accounting(sp, data, bos: int) -> ComplianceResult:
    """The byte audit against the rule the dataset's bytes follow: byte tables, or byte sidecars of the
    convention its manifest names. ``decoded`` (the challenge's): every document's count is its decoded
    text's bytes, whatever the normaliser removed from the raw text. ``original`` (raw-document bytes):
    the run has no raw documents, so documents whose count differs from the decoded text are skipped and
    counted in the receipt, and the rest are audited."""
    convention, named = (dataset_byte_convention(data.val_files[0].parent)
                         if data.target_bytes.source == TARGET_BYTES_FROM_SIDECARS else (None, False))
    result = check_byte_accounting(data.tokens[:CHECK_BYTE_AUDIT_TOKENS].to(torch.int64), audit_decoder(sp, data),
                                   data.target_bytes, bos, raw_document_bytes=convention == CASEOPS_BYTES_ORIGINAL)
    if convention is not None:
        result.details.append(f"byte convention {convention!r} " + ("(the dataset's manifest)" if named else
                                                                   "(the manifest names none: taken as the "
                                                                   "challenge's, the record's)"))
    return result


@dataclasses.dataclass
class BudgetResult(ComplianceResult):
    """The budgets check, with a third verdict besides PASS and FAIL: ``unverified`` when nothing is over
    a cap that binds here but the rule could not be shown to hold (no cap; over on another machine)."""
    unverified: bool = False

    def as_dict(self) -> dict:
        return {**super().as_dict(), "unverified": self.unverified}


def ran_on_challenge_machine(report: dict) -> bool:
    """Whether report.json's env says 8 (or more) H100s; an older report without env counts as another machine."""
    env = report.get("env") or {}
    return CHALLENGE_GPU in str(env.get("gpu", "")) and int(env.get("gpu_count") or 0) >= CHALLENGE_GPU_COUNT


def machine_description(report: dict) -> str:
    env = report.get("env") or {}
    if not env:
        return "an unrecorded machine (report.json has no env)"
    return f"{env.get('gpu_count', 1)}x {env['gpu']}" if env.get("gpu") else str(env.get("device", "cpu"))


def training_plus_calibration_seconds(report: dict) -> float:
    """The run's own total (``train_plus_calibration_seconds``), else training + ``calibration_seconds``.
    Every report since GPTQ calibration was timed writes both; a report with neither had no calibration."""
    if report.get("train_plus_calibration_seconds") is not None:
        return float(report["train_plus_calibration_seconds"])
    return float(report.get("train_seconds") or 0.0) + float(report.get("calibration_seconds") or 0.0)


def training_verdict(cfg: Config, report: dict, on_challenge_machine: bool) -> tuple[str, str]:
    """(``pass``/``fail``/``unverified``, detail) for training + calibration time."""
    total, cap = training_plus_calibration_seconds(report), cfg.train.max_wallclock_seconds
    if 0 < cap <= CHALLENGE_TRAIN_SECONDS:
        fits = total <= cap + STOP_TOLERANCE_SECONDS
        return ("pass" if fits else "fail"), f"training + calibration {total:.1f}s of {cap:g}s" + (
            "" if fits else f" (over by {total - cap:.1f}s: raise GPTQ_RESERVE_SECONDS or lower the cap)")
    # No cap, or one above the challenge's: nothing stopped the run at 600 s, so its measured time is all
    # there is to judge.
    why = "the run had no cap (MAX_WALLCLOCK_SECONDS=0)" if cap <= 0 else f"the run's cap {cap:g}s is above the challenge's"
    detail = f"training budget not enforced: {why}; training + calibration took {total:.1f}s"
    if total <= CHALLENGE_TRAIN_SECONDS:
        return "pass", detail + f", within the challenge's {CHALLENGE_TRAIN_SECONDS:g}s"
    if on_challenge_machine:
        return "fail", detail + f", over the challenge's {CHALLENGE_TRAIN_SECONDS:g}s"
    return "unverified", detail + (f", over the challenge's {CHALLENGE_TRAIN_SECONDS:g}s on {machine_description(report)}, "
                                   "not the challenge's 8xH100: rerun there with MAX_WALLCLOCK_SECONDS=600")


def evaluation_verdict(cfg: Config, report: dict, on_challenge_machine: bool) -> tuple[str, str]:
    """(``pass``/``fail``/``unverified``, detail) for the evaluation time the run measured."""
    evaluation = (report.get("eval_budget") or {}).get("total_seconds")
    budget = cfg.eval.eval_budget_seconds
    if evaluation is None:
        return "unverified", "evaluation time not recorded (report.json has no eval_budget.total_seconds)"
    detail = f"evaluation {evaluation:.1f}s of {budget:g}s on {machine_description(report)}"
    if evaluation <= budget:
        return "pass", detail
    speedup = f"needs {evaluation / budget:.3g}x faster" if budget > 0 else "no time allowed"
    if on_challenge_machine:
        return "fail", detail + f" (over: {speedup})"
    return "unverified", detail + (f" (over here, {speedup}; this is not the challenge's 8xH100, so whether it "
                                   "fits there is unknown: run `pgolf eval` there)")


def check_budgets(cfg: Config, report: dict) -> BudgetResult:
    """Training (with calibration) and evaluation time against their caps, as measured on the run's machine:
    over on the challenge's machine (or over the run's own training cap) fails; over elsewhere, or no cap and
    over the challenge's 600 s elsewhere, is ``unverified`` (not a pass: the receipt's ``passed`` is false)."""
    on_challenge_machine = ran_on_challenge_machine(report)
    verdicts = [training_verdict(cfg, report, on_challenge_machine),
                evaluation_verdict(cfg, report, on_challenge_machine)]
    kinds = {kind for kind, _ in verdicts}
    details = [detail for _, detail in verdicts]
    return BudgetResult("budgets", "fail" not in kinds and "unverified" not in kinds, details,
                        unverified="unverified" in kinds and "fail" not in kinds)


def run_checks(run_dir: Path, overrides: list[str]) -> dict:
    """Every check on the run; returns the receipt."""
    cfg, report = load_run(run_dir, overrides)
    runtime = Runtime(torch.device("cpu"))  # the checks are exact fp32 computations
    data = prepare_validation_data(cfg)
    artifact = find_artifact(run_dir, report)
    model = load_artifact_into_fresh_model(artifact, cfg.model, runtime).eval()
    sp = load_sentencepiece(cfg.data.tokenizer_path)
    bos = sp.bos_id()
    window = min(evaluation_window(cfg), data.tokens.numel() - 1)
    sample = data.tokens[: 2 * window].to(torch.int64).view(2, window)
    boundary_span = span_around_a_document_start(data.tokens, bos, window)
    assert_disjoint_splits(data.train_files, data.val_files)  # raises DataError naming the files otherwise
    validation = check_validation_refused(TRAIN_LOADERS, data.val_files, cfg.model.vocab_size)
    validation.details.append(f"{len(data.train_files)} training and {len(data.val_files)} validation files disjoint")
    results = [
        check_score_first_ttt(cfg, lambda: copy.deepcopy(model), data.tokens, data.target_bytes, runtime),
        check_causality(model, sample, cut=window // 2),
        check_normalization(model, data.tokens[:CHECK_NORMALIZATION_TOKENS].to(torch.int64)),
        check_input_document_isolation(model, boundary_span, bos),
        check_document_isolation_of_scores(cfg, model, boundary_span, bos),
        validation,
        audit_byte_accounting(sp, data, bos),
        check_budgets(cfg, report),
    ]
    checks = [r.as_dict() for r in results]
    return {"run_dir": str(run_dir), "artifact": str(artifact), "checked_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "passed": all(r.passed for r in results), "verdict": receipt_verdict(checks), "checks": checks}


def receipt_verdict(checks: list[dict]) -> str:
    """``passed``; ``failed`` if any check failed; else ``unverified`` if one could not be shown to hold here."""
    if all(check["passed"] for check in checks):
        return "passed"
    return "unverified" if all(check["passed"] or check.get("unverified") for check in checks) else "failed"


def check_status(check: dict) -> str:
    if not check["applicable"]:
        return "N/A "
    return "PASS" if check["passed"] else "UNVERIFIED" if check.get("unverified") else "FAIL"


VERDICT_LINES = {"passed": "all checks passed",
                 "failed": "FAILED",
                 "unverified": "NOT VERIFIED: no check failed, but one could not be shown to hold on this run"}


def write_receipt(run_dir: Path, receipt: dict) -> Path:
    """``check.json``, or the first free ``check_<n>.json``: an earlier receipt is never replaced."""
    path, n = run_dir / "check.json", 2
    while path.exists():
        path, n = run_dir / f"check_{n}.json", n + 1
    write_text_atomic(path, json.dumps(receipt, indent=2) + "\n")
    return path


def run_check_command(args: argparse.Namespace) -> int:
    """``pgolf check RUN_DIR``: print each check, write the receipt; exit 1 unless every check passed (a failed
    or an unverified one: the receipt's ``verdict`` says which)."""
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise PgolfError(f"the run directory {run_dir} does not exist (or is not a directory); give a finished run's "
                         "directory (runs/<RUN_ID>).")
    require_writable_directory(run_dir, "the receipt check.json", may_create=False)  # before the checks
    receipt = run_checks(run_dir, args.overrides)
    receipt_path = write_receipt(run_dir, receipt)
    if args.json:
        print(json.dumps(receipt, indent=2))
    else:
        for check in receipt["checks"]:
            print(f"{check_status(check)}  {check['check']}: {'; '.join(check['details'])}")
        print(f"{VERDICT_LINES[receipt['verdict']]}; receipt: {receipt_path}")
    return 0 if receipt["passed"] else 1
