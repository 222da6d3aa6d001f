"""`pgolf check RUN_DIR` on a tiny run over CaseOps data, for both byte conventions of the sidecars.

One run trains on the `decoded` dataset; the same run is checked again with `DATA_PATH` pointing at the
`original` dataset built from the same raw documents with the same tokenizer (identical tokens, other
sidecars). `decoded` audits every document (whitespace the normaliser removed is not counted, as the
challenge counts it); `original` audits what it can and says what it skipped.
"""

import json
import random

import pytest

from pgolf.cli import main as cli_main
from pgolf.config import apply_config_overrides
from pgolf.data.dataset import build_dataset, iter_jsonl_documents
from pgolf.presets import tiny_cpu
from pgolf.run import main as run_main

CHECK_WORDS = "The river NASA iPhone McDonald stone OK quick Brown fox x86_64 HTML5 café über 42 I a".split()


def _web_documents(count: int) -> list[str]:
    """Raw web-like text (newlines, runs of spaces, tabs, trailing whitespace); every third one clean."""
    rng = random.Random(5)
    docs = []
    for index in range(count):
        words = [rng.choice(CHECK_WORDS) for _ in range(rng.randint(10, 60))]
        if index % 3 == 0:
            docs.append(" ".join(words) + ".")
        else:
            docs.append("".join(w + rng.choice([" ", " ", "  ", "\n", "\n\n", "\t"]) for w in words))
    return docs


pytestmark = pytest.mark.usefixtures("cpu_process")  # tests/e2e/conftest.py


@pytest.fixture(scope="module")
def caseops_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("caseops_check")
    source = root / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in _web_documents(600)), encoding="utf-8")
    decoded = build_dataset(lambda: iter_jsonl_documents(source), 384, root / "decoded", name="web", num_val_docs=250,
                            caseops=True)
    original = build_dataset(lambda: iter_jsonl_documents(source), 384, root / "original", name="web",
                             num_val_docs=250, caseops=True, caseops_bytes="original",
                             tokenizer_path=decoded["tokenizer_path"])
    runs = root / "runs"
    overrides = {"ITERATIONS": "3", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096",
                 "VAL_MAX_TOKENS": "4096", "VOCAB_SIZE": "384", "DATA_PATH": decoded["data_dir"],
                 "TOKENIZER_PATH": decoded["tokenizer_path"], "RUNS_DIR": str(runs), "RUN_ID": "caseops",
                 "BYTE_SIDECARS": "on"}  # tiny_cpu says "off": its own data has no sidecars
    run_main(apply_config_overrides(tiny_cpu(), overrides, source="test"), preset_name="tiny_cpu", echo=False)
    return runs / "caseops", decoded["data_dir"], original["data_dir"]


def _byte_check(capsys, run_dir, *overrides) -> dict:
    assert cli_main(["check", str(run_dir), *overrides, "--json"]) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["passed"], receipt
    return next(c for c in receipt["checks"] if c["check"] == "byte_accounting")


def test_check_passes_on_decoded_sidecars(caseops_run, capsys):
    run_dir, _, _ = caseops_run
    check = _byte_check(capsys, run_dir)
    assert check["passed"] and check["applicable"]
    assert "from the byte sidecars" in check["details"][-2]
    assert check["details"][-1] == "byte convention 'decoded' (the dataset's manifest)"
    assert not any("skipped" in d for d in check["details"])


def test_check_passes_on_original_sidecars_and_says_what_it_skipped(caseops_run, capsys):
    run_dir, _, original_dir = caseops_run
    check = _byte_check(capsys, run_dir, f"DATA_PATH={original_dir}")
    assert check["passed"] and check["applicable"]
    assert check["details"][-1] == "byte convention 'original' (the dataset's manifest)"
    audited, skipped = int(check["details"][-3].split()[0]), int(check["details"][-2].split()[0])
    assert audited > 0 and skipped > 0  # the clean documents are audited, the raw web text is skipped
    assert "only the raw documents can confirm (pgolf data verify DATA_DIR --docs FILE.jsonl)" in check["details"][-2]
