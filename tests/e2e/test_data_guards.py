"""Issue 17 item 3 on the commands that read a finished run: `pgolf eval RUN TOKENIZER_PATH=...` and
`pgolf train --resume RUN TOKENIZER_PATH=...` refuse a tokenizer that is not the run's (both scored with
it before: a BPB a few percent off): by the tokenizer fingerprint the run recorded, and for runs without
that record, by the check training does (the tokenizer must have made the shards)."""

import json
import shutil

import pytest

from pgolf.cli import main as cli_main
from pgolf.config import apply_config_overrides
from pgolf.data.build import train_sentencepiece_tokenizer
from pgolf.data.corpus import default_corpus_documents, ensure_default_dataset
from pgolf.presets import tiny_cpu
from pgolf.run import main as run_main
from testkit import tiny_run_overrides


pytestmark = pytest.mark.usefixtures("cpu_process")  # tests/e2e/conftest.py


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    data = ensure_default_dataset(tmp_path_factory.mktemp("cache"), log=lambda _: None)
    runs = tmp_path_factory.mktemp("runs")
    overrides = tiny_run_overrides(data, runs, "guarded", iterations=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PGOLF_DEVICE", "cpu")
        run_main(apply_config_overrides(tiny_cpu(), overrides, source="test"), preset_name="tiny_cpu", echo=False)
    return runs / "guarded"


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """A 1024-piece tokenizer of the same corpus, upper-cased: same vocabulary size, other pieces."""
    texts = [text.upper() for _, text in default_corpus_documents()]
    return train_sentencepiece_tokenizer(texts, 1024, tmp_path_factory.mktemp("other") / "other_1024")


def test_eval_refuses_another_tokenizer(finished_run, other_tokenizer, tmp_path, capsys):
    """Refused by the run's recorded tokenizer fingerprint first; a run without that record (an exported
    script's, or older) by the shards' check."""
    assert cli_main(["eval", str(finished_run), f"TOKENIZER_PATH={other_tokenizer}"]) == 2
    assert "is not the tokenizer the run" in capsys.readouterr().err
    unrecorded = shutil.copytree(finished_run, tmp_path / "unrecorded")
    report = json.loads((unrecorded / "report.json").read_text())
    (unrecorded / "report.json").write_text(json.dumps({**report, "data": None}))
    events = [json.loads(line) for line in (unrecorded / "metrics.jsonl").read_text().splitlines()]
    (unrecorded / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in e.items() if k != "data"}) + "\n"
                                                      for e in events))
    assert cli_main(["eval", str(unrecorded), f"TOKENIZER_PATH={other_tokenizer}"]) == 2
    assert "is not the one the shards" in capsys.readouterr().err


def test_resume_refuses_another_tokenizer(finished_run, other_tokenizer, tmp_path, capsys):
    interrupted = tmp_path / "interrupted"
    shutil.copytree(finished_run, interrupted)
    (interrupted / "report.json").unlink()  # a run stopped before its report: it can be resumed
    assert cli_main(["train", "--resume", str(interrupted), f"TOKENIZER_PATH={other_tokenizer}"]) == 2
    assert "is not the tokenizer the run" in capsys.readouterr().err  # the metrics header's record


def test_a_run_on_caseops_data_scores_every_phase_on_the_original_bytes(tmp_path):
    """`pgolf train` on a CaseOps dataset with BYTE_SIDECARS=auto (found by looking, as before the setting
    existed): the round trip, sliding and TTT phases all divide by the validation sidecars' bytes, i.e.
    the original text's."""
    import json
    import random

    import numpy as np

    from pgolf.data.dataset import build_dataset
    from pgolf.data.shards import read_shard

    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlucmfw") for _ in range(rng.randint(1, 8))) for _ in range(300)]
    words = [w.title() if i % 3 == 0 else w.upper() if i % 7 == 0 else w for i, w in enumerate(words)]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))) + "." for _ in range(400)]
    built = build_dataset(lambda: iter(docs), 400, tmp_path / "data", name="mixed", num_val_docs=40, caseops=True)
    seq_len = 32
    overrides = {"ITERATIONS": "2", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_SEQ_LEN": str(seq_len),
                 "TRAIN_BATCH_TOKENS": "2048", "VOCAB_SIZE": "400", "DATA_PATH": built["data_dir"],
                 "TOKENIZER_PATH": built["tokenizer_path"], "RUNS_DIR": str(tmp_path / "runs"), "RUN_ID": "caseops",
                 "SLIDING_WINDOW_ENABLED": "1", "EVAL_STRIDE": "16", "TTT_ENABLED": "1", "TTT_CHUNK_TOKENS": "512",
                 "TTT_EPOCHS": "1", "BYTE_SIDECARS": "auto"}  # tiny_cpu says "off"
    report = run_main(apply_config_overrides(tiny_cpu(), overrides, source="test"), preset_name="tiny_cpu", echo=False)
    tokens = np.asarray(read_shard(f"{built['data_dir']}/fineweb_val_000000.bin"))
    counts = np.asarray(read_shard(f"{built['data_dir']}/fineweb_val_bytes_000000.bin"), dtype=np.int64)
    usable = ((len(tokens) - 1) // seq_len) * seq_len + 1
    original = int(counts[1:usable].sum())
    assert report["val_bytes"] == original
    events = [json.loads(line) for line in (tmp_path / "runs" / "caseops" / "metrics.jsonl").read_text().splitlines()]
    phases = {e["label"]: e["byte_count"] for e in events if e.get("event") == "eval"}
    assert {"quantized_sliding_window", "quantized_ttt"} <= set(phases)
    assert set(phases.values()) == {original}
