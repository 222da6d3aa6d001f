"""`pgolf significance` (pgolf/exp): the challenge's worked example, agreement with SciPy, log parsing."""

import json
import math
import random

import pytest

from pgolf.cli import main as cli_main
from pgolf.errors import PgolfError
from pgolf.exp.logs import read_run_score, score_from_log_text
from pgolf.exp.stats import (one_sample_improvement_test, one_sample_test_from_summary, regularized_incomplete_beta,
                             student_t_upper_tail, welch_improvement_test)

SEQ4096_SEEDS = (1.20143417, 1.19945102, 1.20319508)


def challenge_log(tmp_path, name, bpb, loss=2.03, seed=None):
    """A log in the baseline's format, with an in-training validation line that is not a score."""
    text = (f"seed:{seed}\nstep:1000/20000 val_loss:2.3000 val_bpb:1.3600 train_time:1000ms\n"
            f"final_int8_zlib_roundtrip val_loss:{loss:.4f} val_bpb:{bpb:.4f} eval_time:1000ms\n"
            f"final_int8_zlib_roundtrip_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}\n")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_2026_03_19_worked_example(tmp_path, capsys):
    """SPEC 3: three seeds against 1.21613611 - 0.005 (bpb): t = 9.06, df = 2, p = 0.006. The README's
    t comes from rounded statistics (its mean 1.20136 and std 0.00187 give 9.055); the exact seeds give
    t = 9.040; p = 0.006 either way."""
    published = one_sample_test_from_summary(1.20136, 0.00187, 3, 1.21613611 - 0.005)
    assert published.t == pytest.approx(9.06, abs=0.01) and published.df == 2 and round(published.p, 3) == 0.006
    result = one_sample_improvement_test(list(SEQ4096_SEEDS), 1.21613611 - 0.005)
    assert result.t == pytest.approx(9.040, abs=0.001) and result.df == 2
    assert round(result.p, 3) == 0.006 and result.significant
    assert (round(result.mean, 5), round(result.std, 5)) == (1.20136, 0.00187)
    logs = [challenge_log(tmp_path, f"seed{i}.txt", bpb, seed=s) for i, (bpb, s) in
            enumerate(zip(SEQ4096_SEEDS, (1337, 42, 7)))]
    status = cli_main(["significance", *map(str, logs), "--against", "1.21613611", "--margin", "0.005", "--units", "bpb"])
    out = capsys.readouterr().out
    assert status == 0 and "t=9.040" in out and "p=0.006" in out and "significant" in out


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(seed)
    a = [1.1 + rng.gauss(0, 0.002) for _ in range(rng.randint(2, 6))]
    b = [1.105 + rng.gauss(0, 0.003) for _ in range(rng.randint(2, 6))]
    one = one_sample_improvement_test(a, 1.104)
    reference = stats.ttest_1samp(a, 1.104, alternative="less")
    assert one.t == pytest.approx(-reference.statistic, rel=1e-9) and one.p == pytest.approx(reference.pvalue, rel=1e-7)
    welch = welch_improvement_test(a, b, margin=0.001)
    reference = stats.ttest_ind(a, [x - 0.001 for x in b], equal_var=False, alternative="less")
    assert welch.t == pytest.approx(-reference.statistic, rel=1e-9)
    assert welch.p == pytest.approx(reference.pvalue, rel=1e-7)
    for x, p, q in ((0.3, 2.5, 0.5), (0.9, 1.0, 7.0), (0.01, 0.5, 0.5)):
        assert regularized_incomplete_beta(x, p, q) == pytest.approx(__import__("scipy.special").special.betainc(p, q, x), rel=1e-10)
    assert student_t_upper_tail(-1.5, 3) == pytest.approx(stats.t.sf(-1.5, 3), rel=1e-10)


def test_margin_in_nats_is_converted_with_the_runs_tokens_per_byte(tmp_path, capsys):
    # loss 2.0 nats/token at 1.0 bpb: tokens/byte = ln 2 / 2; 0.005 nats = 0.005 / 2 = 0.0025 bpb.
    logs = [challenge_log(tmp_path, f"r{i}.txt", bpb, loss=2.0 * bpb) for i, bpb in enumerate((1.0, 1.001, 0.999))]
    cli_main(["significance", *map(str, logs), "--against", "1.1", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["margin_bpb"] == pytest.approx(0.0025, rel=1e-6)
    assert summary["threshold"] == pytest.approx(1.1 - 0.0025, rel=1e-9)


def test_scores_from_each_log_format(tmp_path):
    r1081 = ("4000/20000 val_loss: 2.1000 val_bpb: 1.1119\n"
             "quantized val_loss:2.84000000 val_bpb:1.09970431 eval_time:25500ms\n"
             "quantized_ttt val_loss:2.79180191 val_bpb:1.08079352 eval_time:366500ms\n")
    score = score_from_log_text(r1081, "r1081.txt")
    assert (score.label, score.val_bpb, score.val_loss) == ("quantized_ttt", 1.08079352, 2.79180191)
    assert score.tokens_per_byte == pytest.approx(1.08079352 * math.log(2) / 2.79180191)
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"val_loss": 3.0, "val_bpb": 1.5, "val_bpb_final": 1.4,
                                                 "val_bpb_final_label": "quantized_ttt", "val_loss_quantized_ttt": 2.8,
                                                 "seed": 42, "code_hash": "abc"}))
    pgolf = read_run_score(run)
    assert (pgolf.val_bpb, pgolf.val_loss, pgolf.seed, pgolf.code_hash) == (1.4, 2.8, 42, "abc")


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "crashed.txt"
    empty.write_text("step:1/20000 train_loss:6.9\n")
    with pytest.raises(PgolfError, match="no final score line"):
        read_run_score(empty)
    with pytest.raises(PgolfError, match="at least two seeds"):
        one_sample_improvement_test([1.2], 1.21)
    one = challenge_log(tmp_path, "one.txt", 1.2)
    assert cli_main(["significance", str(one), "--against", "1.3"]) == 2
    assert "at least two seeds" in capsys.readouterr().err
    logs = [challenge_log(tmp_path, f"w{i}.txt", bpb) for i, bpb in enumerate((1.2, 1.21))]
    assert cli_main(["significance", *map(str, logs), "--test", "welch"]) == 2
    assert "--baseline" in capsys.readouterr().err
