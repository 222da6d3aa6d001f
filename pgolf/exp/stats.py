"""Significance of a claimed improvement, as the challenge's rule asks (SPEC 6), without SciPy.

* one-sample: are the seeds' scores below ``against - margin``? One-sided Student t test, df = n - 1
  (the README rule as the records apply it: 0.005 improvement, p < 0.01, usually three seeds);
* Welch: are the new seeds' scores below the baseline seeds' scores minus the margin? One-sided,
  Welch-Satterthwaite degrees of freedom.

The Student t tail comes from the regularised incomplete beta function, evaluated with its continued
fraction (modified Lentz), accurate to ~1e-12 for the sizes that occur here.
"""

import math
import statistics
from dataclasses import dataclass

from pgolf.errors import PgolfError

STATS_MAX_ITERATIONS = 400
STATS_EPSILON = 1e-15


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, STATS_MAX_ITERATIONS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < STATS_EPSILON:
            break
    return result


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for 0 <= x <= 1, a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def student_t_upper_tail(t: float, df: float) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return tail if t >= 0 else 1.0 - tail


@dataclass(frozen=True)
class TestResult:
    test: str
    n: int
    mean: float
    std: float
    threshold: float
    t: float
    df: float
    p: float
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p < self.alpha

    def as_dict(self) -> dict:
        return {"test": self.test, "n": self.n, "mean": self.mean, "std": self.std, "threshold": self.threshold,
                "t": self.t, "df": self.df, "p": self.p, "alpha": self.alpha, "significant": self.significant}


def _need_two(values: list[float], what: str) -> None:
    if len(values) < 2:
        raise PgolfError(f"{what} has {len(values)} score(s); a t test needs at least two seeds (the records use 3).")


def one_sample_improvement_test(scores: list[float], threshold: float, alpha: float = 0.01) -> TestResult:
    """H1: the mean score is below ``threshold`` (= the record to beat minus the margin); one-sided."""
    _need_two(scores, "the new run set")
    return one_sample_test_from_summary(statistics.fmean(scores), statistics.stdev(scores), len(scores), threshold,
                                        alpha)


def one_sample_test_from_summary(mean: float, std: float, n: int, threshold: float, alpha: float = 0.01) -> TestResult:
    """The same test from a published mean, sample standard deviation and count."""
    if std == 0.0:
        raise PgolfError("the seeds' scores are all identical, so their spread is 0 and a t test is undefined.")
    t = (threshold - mean) / (std / math.sqrt(n))
    return TestResult("one-sample", n, mean, std, threshold, t, n - 1, student_t_upper_tail(t, n - 1), alpha)


def welch_improvement_test(scores: list[float], baseline: list[float], margin: float,
                           alpha: float = 0.01) -> TestResult:
    """H1: mean(scores) < mean(baseline) - margin, with unequal variances; one-sided."""
    _need_two(scores, "the new run set")
    _need_two(baseline, "the baseline run set")
    mean, mean_base = statistics.fmean(scores), statistics.fmean(baseline)
    var, var_base = statistics.variance(scores) / len(scores), statistics.variance(baseline) / len(baseline)
    if var + var_base == 0.0:
        raise PgolfError("both run sets have zero spread; a t test is undefined.")
    t = (mean_base - margin - mean) / math.sqrt(var + var_base)
    df = (var + var_base) ** 2 / (var ** 2 / (len(scores) - 1) + var_base ** 2 / (len(baseline) - 1))
    return TestResult("welch", len(scores), mean, statistics.stdev(scores), mean_base - margin, t, df,
                      student_t_upper_tail(t, df), alpha)


def nats_to_bpb(nats: float, tokens_per_byte: float) -> float:
    """A per-token difference in nats as bits per byte: nats / ln 2 x tokens per byte."""
    return nats / math.log(2.0) * tokens_per_byte
