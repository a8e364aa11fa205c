"""ROOD-MRI's severity-weighted robustness scores of the MR-artifact rows, and a paired test of each model's score.

Boone et al. 2023, "ROOD-MRI: Benchmarking the robustness of deep learning segmentation models to out-of-distribution
and corrupted data in MRI", NeuroImage 278:120289 (their package ``roodmri``, ``calculate_metrics``, with the default
``alpha_oa = alpha_deg = 2/3``). For one model and one corruption, with ``M_s`` the mean over subjects of a
higher-is-better metric at severity ``s`` (ours: each subject's mean Dice over WT, TC and ET; the CSV of the table also
has each region), ``M_0`` the mean on the clean input and the weights ``w_s = alpha ** s`` over the severities ``S``
present in the CSV:

* **overall** ``OA = (sum_{s in S} w_s M_s + M_0) / (sum_{s in S} w_s + 1)``: a weighted mean of the clean and
  corrupted scores in which mild corruptions (likelier in practice) count more;
* **degradation** ``D = sum_{s in S} w_s (M_0 - M_s) / sum_{s in S} w_s``: the weighted mean loss from the clean score
  (the sign is that of a higher-is-better metric: a positive ``D`` is a loss).

A model's overall and degradation scores are the means over the corruptions. The weights are over the severities
present, so scores of runs with different severities (the demo's 1, 3, 5 vs all five levels) are not comparable;
every caption names them.

Per subject, the same ``OA`` from the subject's own clean and corrupted Dice, averaged over the corruptions, gives one
score per subject (its mean over subjects is the model's overall score when every subject has every cell); each
model is compared with the undefended reference on the subjects they share by a two-sided paired Wilcoxon signed-rank
test (:func:`common.metrics.stats.wilcoxon_p`: ``zero_method="wilcox"``, ``p = 1`` when all differences are zero),
Bonferroni-corrected over the models compared. With fewer than :data:`MIN_SUBJECTS` pairs no test is made (``p`` is
NaN, shown as ``n/a`` with the reason): with 5 pairs the smallest two-sided exact p is 2/32 = 0.0625, so the test
could never reject at 0.05.

Example::

    overall_score(0.9, {1: 0.8, 3: 0.7, 5: 0.5})       # alpha = 2/3
    table = build_rood_table(load_results("results.csv"), "3d")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.corruptions import CORRUPTIONS
from common.errors import RobustsegError
from common.metrics.stats import bonferroni, wilcoxon_p
from common.report.labels import DICE_COLUMNS, defence_sort_key, model_label
from common.report.options import ReportOptions
from common.report.schema import Record, mean_dice
from common.report.selection import by_subject, clean_rows, model_identities
from common.report.table import Table, format_p
from common.utils.enums import Defense, Net, Threat
from common.utils.validation import check_int, check_number, is_number

__all__ = [
    "MIN_SUBJECTS",
    "ROOD_ALPHA",
    "ROOD_CSV_COLUMNS",
    "CorruptionScores",
    "ModelRood",
    "PairedTest",
    "build_rood_table",
    "corruption_models",
    "corruption_scores",
    "degradation_score",
    "overall_score",
    "paired_wilcoxon",
    "rood_scores",
    "severity_weights",
]

ROOD_ALPHA = 2 / 3
"""``roodmri``'s default ``alpha_oa`` and ``alpha_deg``: severity ``s`` weighs ``(2/3) ** s``."""
MIN_SUBJECTS = 6
"""The fewest paired subjects a Wilcoxon test is run on (below 6 the exact two-sided p cannot reach 0.05)."""
ROOD_CSV_COLUMNS: tuple[str, ...] = (
    "model", "defense", "defense_param", "corruption", "region", "clean", "overall", "degradation", "n", "reference",
    "overall_difference", "n_paired", "p", "p_bonferroni", "p_note", "degradation_difference", "p_degradation",
    "p_degradation_bonferroni",
)  # fmt: skip
"""Columns of the table's long-format CSV: per model, corruption (``all``: the mean over corruptions) and region
(``mean``: the mean Dice over WT, TC and ET per subject); the test columns on the ``all``/``mean`` lines only."""


def _region_dice(column: str) -> Callable[[Mapping[str, object]], float]:
    return lambda row: float(row[column])  # type: ignore[arg-type]


METRICS: dict[str, Callable[[Mapping[str, object]], float]] = {
    "mean": mean_dice,
    **{region: _region_dice(column) for region, column in DICE_COLUMNS.items()},
}
"""metric name -> the per-row score: ``mean`` (the mean Dice over WT, TC, ET) and each region's Dice."""


# ----------------------------------------------------------------------------------------------------- the formulas
def severity_weights(severities: Sequence[int], alpha: float = ROOD_ALPHA) -> np.ndarray:
    """ROOD-MRI's severity weights ``w_s = alpha ** s`` (Boone et al. 2023), one per severity, in the given order.

    Args:
        severities: the severity levels present (integers >= 1, e.g. ``(1, 3, 5)``), without repeats.
        alpha: the weight base (``roodmri``'s ``alpha_oa`` / ``alpha_deg``; 2/3 by default): below 1 the mild
            severities weigh more.

    Returns:
        The weights, float64.

    Raises:
        RobustsegError: if ``alpha`` is not a finite number > 0, ``severities`` is empty, repeats a level, or holds
            anything but integers >= 1.
    """
    alpha = check_number("alpha", alpha, minimum=0, min_inclusive=False, hint="ROOD-MRI's severity weight base")
    levels = [check_int("severity", s, minimum=1, hint="a corruption's level") for s in severities]
    if not levels:
        raise RobustsegError("severities must name at least one severity level (e.g. (1, 3, 5)), got none.")
    if len(set(levels)) != len(levels):
        raise RobustsegError(f"severities must not repeat a level, got {list(severities)}.")
    return np.array([alpha**s for s in levels], dtype=np.float64)


def _checked(clean: float, corrupted: Mapping[int, float], alpha: float) -> tuple[float, np.ndarray, np.ndarray]:
    if not (is_number(clean) and math.isfinite(clean)):
        raise RobustsegError(f"clean must be a finite number (the metric on the clean input), got {clean!r}.")
    if not isinstance(corrupted, Mapping):
        raise RobustsegError(f"corrupted must map severity -> metric, got {type(corrupted).__name__}.")
    weights = severity_weights(list(corrupted), alpha)
    values = list(corrupted.values())
    bad = [v for v in values if not (is_number(v) and math.isfinite(v))]
    if bad:
        raise RobustsegError(f"corrupted must map each severity to a finite number, got {dict(corrupted)}.")
    return float(clean), weights, np.asarray(values, dtype=np.float64)


def overall_score(clean: float, corrupted: Mapping[int, float], alpha: float = ROOD_ALPHA) -> float:
    """ROOD-MRI's overall robustness of one corruption (Boone et al. 2023; ``roodmri.calculate_metrics``).

    ``OA = (sum_s w_s M_s + M_0) / (sum_s w_s + 1)`` with ``w_s = alpha ** s`` over the severities ``s`` given: the
    weighted mean of the clean metric (weight ``alpha ** 0 = 1``) and the corrupted ones.

    Args:
        clean: ``M_0``, the metric on the clean input.
        corrupted: severity -> ``M_s``, the metric at that severity (the severities present; e.g. ``{1: .., 3: ..}``).
        alpha: the weight base (2/3, ``roodmri``'s ``alpha_oa``).

    Returns:
        The overall score, in the metric's units.

    Raises:
        RobustsegError: if ``clean`` or a corrupted value is not a finite number, ``corrupted`` is empty or not a
            mapping, a severity is not an integer >= 1, or ``alpha`` is not a finite number > 0.
    """
    clean, weights, values = _checked(clean, corrupted, alpha)
    return float((np.sum(weights * values) + clean) / (np.sum(weights) + 1.0))


def degradation_score(clean: float, corrupted: Mapping[int, float], alpha: float = ROOD_ALPHA) -> float:
    """ROOD-MRI's degradation of one corruption for a higher-is-better metric (Boone et al. 2023).

    ``D = sum_s w_s (M_0 - M_s) / sum_s w_s`` with ``w_s = alpha ** s`` over the severities ``s`` given: the weighted
    mean loss from the clean metric (positive: the corruption lowers the metric).

    Args:
        clean: ``M_0``, the metric on the clean input.
        corrupted: severity -> ``M_s``, the metric at that severity (the severities present).
        alpha: the weight base (2/3, ``roodmri``'s ``alpha_deg``).

    Returns:
        The degradation, in the metric's units.

    Raises:
        RobustsegError: as :func:`overall_score`.
    """
    clean, weights, values = _checked(clean, corrupted, alpha)
    return float(np.sum(weights * (clean - values)) / np.sum(weights))


# ---------------------------------------------------------------------------------------------- the paired test
@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired Wilcoxon signed-rank test, or why it was not made.

    Attributes:
        p: the uncorrected p-value; NaN when not tested.
        n: the number of pairs.
        note: why no test was made, or what to know about its p (all differences zero); ``""`` otherwise.
    """

    p: float
    n: int
    note: str = ""

    @property
    def tested(self) -> bool:
        """Whether a p-value was computed."""
        return not math.isnan(self.p)


def paired_wilcoxon(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, min_subjects: int = MIN_SUBJECTS
) -> PairedTest:
    """The two-sided paired Wilcoxon signed-rank test of ``a`` vs ``b`` (:func:`common.metrics.stats.wilcoxon_p`).

    Never raises on the data: too few pairs or non-finite values give ``p = NaN`` with the reason; all-zero
    differences give ``p = 1`` (the house convention) with a note; ties are scipy's business (its tie correction).

    Args:
        a: one value per subject.
        b: the values of the same subjects, in the same order.
        min_subjects: the fewest pairs to test (:data:`MIN_SUBJECTS`).

    Returns:
        The :class:`PairedTest`.

    Raises:
        RobustsegError: if ``a`` and ``b`` differ in length or ``min_subjects`` is not an integer >= 1.
    """
    min_subjects = check_int("min_subjects", min_subjects, minimum=1)
    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise RobustsegError(f"a and b must be paired (same length), got {x.size} and {y.size} values.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return PairedTest(math.nan, int(x.size), "non-finite scores")
    if x.size < min_subjects:
        return PairedTest(math.nan, int(x.size), f"{x.size} paired subjects < {min_subjects}")
    if np.all(x == y):
        return PairedTest(1.0, int(x.size), "all paired differences are zero")
    return PairedTest(wilcoxon_p(x, y), int(x.size))


# --------------------------------------------------------------------------------------------- from the CSV rows
@dataclass
class CorruptionScores:
    """One model's scores from its clean and ``corruption`` rows, per subject.

    Attributes:
        clean: subject -> the metric on the clean input (subjects that also have corruption rows).
        cells: (corruption, severity) -> subject -> the metric on the corrupted input.
    """

    clean: dict[str, float] = field(default_factory=dict)
    cells: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)

    def corruptions(self, order: Sequence[str] = ()) -> list[str]:
        """The corruption names, those in ``order`` first (in that order), then the others sorted."""
        names = {name for name, _ in self.cells}
        return [n for n in order if n in names] + sorted(names - set(order))

    def severities(self, corruption: str | None = None) -> list[int]:
        """The severities present (of one corruption, or of any), ascending."""
        return sorted({s for name, s in self.cells if corruption is None or name == corruption})

    def subject_means(self, corruption: str) -> dict[int, float]:
        """severity -> ``M_s``, the mean over the subjects of the cell (those with a clean score)."""
        return {s: float(np.mean(list(self.cells[(corruption, s)].values()))) for s in self.severities(corruption)}


def corruption_scores(
    records: Sequence[Record], model: str, metric: str = "mean", source: str = "results"
) -> CorruptionScores:
    """A model's per-subject ``metric`` on the clean input and under each corruption and severity.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        model: the model.
        metric: ``"mean"`` (the mean Dice over WT, TC, ET) or a region (``"WT"``, ``"TC"``, ``"ET"``).
        source: name of the CSV, for error messages.

    Returns:
        The scores; corrupted scores only of subjects with a clean row, clean scores only of subjects with a
        corrupted one (empty when the model has no corruption rows).

    Raises:
        RobustsegError: for an unknown ``metric``, or a subject with several rows in one cell.
    """
    if metric not in METRICS:
        raise RobustsegError(f"metric must be one of {sorted(METRICS)}, got {metric!r}.")
    score = METRICS[metric]
    rows = [r for r in records if r["model"] == model and r["threat"] == Threat.CORRUPTION]
    clean = {s: score(r) for s, r in by_subject(clean_rows(records, model), f"model {model} clean", source).items()}
    grouped: dict[tuple[str, int], list[Record]] = {}
    for r in rows:
        grouped.setdefault((str(r["attack"]), int(r["severity"])), []).append(r)  # type: ignore[arg-type]
    out = CorruptionScores()
    for (name, severity), cell_rows in grouped.items():
        cell = by_subject(cell_rows, f"model {model} corruption {name} at severity {severity}", source)
        kept = {s: score(r) for s, r in cell.items() if s in clean}
        if kept:
            out.cells[(name, severity)] = kept
    seen = {s for cell in out.cells.values() for s in cell}
    out.clean = {s: v for s, v in clean.items() if s in seen}
    return out


@dataclass
class ModelRood:
    """The ROOD-MRI scores of one model.

    Attributes:
        model: the model.
        clean: ``M_0``, the mean over subjects of the clean metric, per metric (``mean``, ``WT``, ``TC``, ``ET``).
        overall: the mean over corruptions of the overall score, per metric (``mean``, ``WT``, ``TC``, ``ET``).
        degradation: the same for the degradation.
        per_corruption: metric -> corruption -> (overall, degradation).
        subject_overall: subject -> the mean over corruptions of the subject's own overall score (``mean`` metric).
        subject_degradation: the same for the degradation, which leaves out the clean Dice (robustness alone).
        n: the number of subjects with a clean score.
        severities: the severities present.
    """

    model: str
    clean: dict[str, float]
    overall: dict[str, float]
    degradation: dict[str, float]
    per_corruption: dict[str, dict[str, tuple[float, float]]]
    subject_overall: dict[str, float]
    subject_degradation: dict[str, float]
    n: int
    severities: list[int]


def _model_rood(records: Sequence[Record], model: str, order: Sequence[str], alpha: float, source: str) -> ModelRood:
    clean_means, overall, degradation, per_corruption = {}, {}, {}, {}
    subject_overall: dict[str, float] = {}
    subject_degradation: dict[str, float] = {}
    n, severities = 0, []
    for metric in METRICS:
        scores = corruption_scores(records, model, metric, source)
        clean = clean_means[metric] = float(np.mean(list(scores.clean.values())))
        pairs = {}
        for name in scores.corruptions(order):
            means = scores.subject_means(name)
            pairs[name] = (overall_score(clean, means, alpha), degradation_score(clean, means, alpha))
        per_corruption[metric] = pairs
        overall[metric] = float(np.mean([p[0] for p in pairs.values()]))
        degradation[metric] = float(np.mean([p[1] for p in pairs.values()]))
        if metric == "mean":
            n, severities = len(scores.clean), scores.severities()
            for subject, value in scores.clean.items():
                own = [
                    {s: scores.cells[(c, s)][subject] for s in scores.severities(c) if subject in scores.cells[(c, s)]}
                    for c in scores.corruptions(order)
                    if any(subject in scores.cells[(c, s)] for s in scores.severities(c))
                ]  # fmt: skip
                subject_overall[subject] = float(np.mean([overall_score(value, m, alpha) for m in own]))
                subject_degradation[subject] = float(np.mean([degradation_score(value, m, alpha) for m in own]))
    return ModelRood(model, clean_means, overall, degradation, per_corruption, subject_overall, subject_degradation,
                     n, severities)  # fmt: skip


def rood_scores(
    records: Sequence[Record], net: str, alpha: float = ROOD_ALPHA, source: str = "results"
) -> dict[str, ModelRood]:
    """The ROOD-MRI scores of every model of ``net`` with ``corruption`` rows and clean rows of the same subjects.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        alpha: the severity weight base (:data:`ROOD_ALPHA`).
        source: name of the CSV, for error messages.

    Returns:
        model -> its :class:`ModelRood`, models in defence order (empty without corruption rows).

    Raises:
        RobustsegError: if ``alpha`` is not a finite number > 0, or a subject has several rows in one cell.
    """
    check_number("alpha", alpha, minimum=0, min_inclusive=False, hint="ROOD-MRI's severity weight base")
    return {m: _model_rood(records, m, CORRUPTIONS, alpha, source) for m in corruption_models(records, net, source)}


def corruption_models(records: Sequence[Record], net: str, source: str = "results") -> list[str]:
    """The models of ``net`` with ``corruption`` rows of subjects that have clean rows, in defence order.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        source: name of the CSV, for error messages.

    Raises:
        RobustsegError: if a subject has several rows in one cell.
    """
    info = model_identities(records, net)
    models = sorted(
        {str(r["model"]) for r in records if r["net"] == net and r["threat"] == Threat.CORRUPTION},
        key=lambda m: defence_sort_key(info[m][1], info[m][2], m),
    )
    return [m for m in models if corruption_scores(records, m, "mean", source).cells]


# ------------------------------------------------------------------------------------------------------ the table
def _signed(value: float) -> str:
    """A difference with its sign, ``"n/a"`` for NaN; one that rounds to zero is ``+0.000``, never ``-0.000``."""
    if math.isnan(value):
        return "n/a"
    text = f"{value:+.3f}"
    return "+0.000" if text == "-0.000" else text


def _reference(scores: Mapping[str, ModelRood], info: Mapping[str, tuple[str, str, str]], net: str,
               baselines: Sequence[str]) -> tuple[str | None, str]:  # fmt: skip
    """The reference model of the tests and, when there is none, why."""
    named = [b for b in baselines if info.get(b, ("",))[0] == net]
    if len(named) > 1:
        raise RobustsegError(f"baseline: several models of net {net} given ({named}); expected one per net.")
    if named:
        if named[0] in scores:
            return named[0], ""
        return None, f"the reference model {named[0]} has no corruption rows"
    undefended = [m for m in scores if info[m][1] == Defense.NONE]
    if len(undefended) == 1:
        return undefended[0], ""
    if not undefended:
        return None, "no undefended model (defense 'none') has corruption rows"
    return None, f"several undefended models {undefended}; pass baseline=<model> to choose one"


def build_rood_table(
    records: Sequence[Record],
    net: str,
    options: ReportOptions | None = None,
    source: str = "results",
    alpha: float = ROOD_ALPHA,
) -> Table | None:
    """The ROOD-MRI scores of one net's models, each tested against the undefended reference (``None`` without
    corruption rows).

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        options: the report options: ``baseline`` (the reference; ``None``: the net's only undefended model) and
            ``alpha`` (the significance level after Bonferroni correction); ``None``: the defaults.
        source: name of the CSV, for error messages.
        alpha: ROOD-MRI's severity weight base (:data:`ROOD_ALPHA`), not the significance level.

    Returns:
        The table ``rood_<net>``, or ``None``.

    Raises:
        RobustsegError: if ``alpha`` is not a finite number > 0, several baselines of the net are given, or a subject
            has several rows in one cell.
    """
    options = ReportOptions.resolve(options)
    scores = rood_scores(records, net, alpha, source)
    if not scores:
        return None
    info = model_identities(records, net)
    reference, why = _reference(scores, info, net, options.baselines)
    models = list(scores)
    unique = len({model_label(m, info) for m in models}) == len(models)
    label = {m: model_label(m, info, unique) for m in models}

    def paired(score: str) -> tuple[dict[str, tuple[PairedTest, float]], dict[str, float]]:
        """model -> (test, mean paired difference) of a per-subject score against the reference; Bonferroni p's."""
        found: dict[str, tuple[PairedTest, float]] = {}
        if reference is not None:
            base = getattr(scores[reference], score)
            for m in models:
                if m != reference:
                    own = getattr(scores[m], score)
                    shared = sorted(set(own) & set(base))
                    a, b = np.array([own[k] for k in shared]), np.array([base[k] for k in shared])
                    found[m] = (paired_wilcoxon(a, b), float(np.mean(a - b)) if shared else math.nan)
        done = [m for m, (t, _) in found.items() if t.tested]
        return found, dict(zip(done, bonferroni([found[m][0].p for m in done]).tolist(), strict=True))

    tests, corrected = paired("subject_overall")
    tested = [m for m, (t, _) in tests.items() if t.tested]
    degradation_tests, degradation_corrected = paired("subject_degradation")

    header = ["Model", "Clean", "Overall", "Degradation", "Δ overall vs reference", "p", "p (Bonferroni)", "n",
              "Δ degradation", "p degradation (Bonferroni)"]  # fmt: skip
    rows, csv_rows, notes = [], [], []
    for m in models:
        s = scores[m]
        scores_text = [f"{s.clean['mean']:.3f}", f"{s.overall['mean']:.3f}", f"{s.degradation['mean']:.3f}"]
        test_line: list[object] = [None, None, None, None, "", None, None, None]
        if m in tests:
            test, difference = tests[m]
            p_corr = corrected.get(m)
            mark = "*" if p_corr is not None and p_corr <= options.alpha else ""
            d_test, d_difference = degradation_tests[m]
            d_corr = degradation_corrected.get(m)
            d_mark = "*" if d_corr is not None and d_corr <= options.alpha else ""
            rows.append([label[m], *scores_text, _signed(difference),
                         format_p(test.p) if test.tested else "n/a",
                         "n/a" if p_corr is None else format_p(p_corr) + mark, str(test.n),
                         _signed(d_difference),
                         "n/a" if d_corr is None else format_p(d_corr) + d_mark])  # fmt: skip
            if test.note:
                notes.append(f"{label[m]}: {'p = 1' if test.tested else 'no test'}: {test.note}.")
            test_line = [difference, test.n, test.p, p_corr, test.note, d_difference, d_test.p, d_corr]
        else:
            dash = "-" if m == reference else "n/a"
            rows.append([label[m], *scores_text, dash, dash, dash, str(s.n), dash, dash])
        lead = [m, info[m][1], info[m][2]]
        for metric in METRICS:
            scored = [s.clean[metric], s.overall[metric], s.degradation[metric], s.n, reference or ""]
            blank = [None, None, None, None, "", None, None, None]
            csv_rows.append([*lead, "all", metric, *scored, *(test_line if metric == "mean" else blank)])
            for name, (oa, deg) in s.per_corruption[metric].items():
                scored = [s.clean[metric], oa, deg, s.n, reference or ""]
                csv_rows.append([*lead, name, metric, *scored, *blank])

    severities = sorted({v for s in scores.values() for v in s.severities})
    weights = severity_weights(severities, alpha)
    weight_text = ", ".join(f"w{s} = {w:.3f}" for s, w in zip(severities, weights, strict=True))
    reference_text = f"`{reference}`" if reference else "none"
    n_text = sorted({s.n for s in scores.values()})
    caption = (
        f"{Net(net).title}: ROOD-MRI robustness scores (Boone et al., NeuroImage 2023) of the mean Dice over WT, TC "
        f"and ET per subject under the MR artifacts, at the severities present, {', '.join(map(str, severities))} "
        f"(weights alpha^s with alpha = {alpha:.3g}: {weight_text}; clean weight 1). Overall = (sum_s w_s M_s + "
        "M_0) / (sum_s w_s + 1) and degradation = sum_s w_s (M_0 - M_s) / sum_s w_s per corruption, with M_s the "
        "mean Dice over subjects at severity s and M_0 the clean one; the model's scores are the means over the "
        f"corruptions (n = {'/'.join(map(str, n_text))} subjects). Higher overall is better, higher degradation "
        "worse; the overall score includes the clean Dice (weight 1), so a model with a higher clean Dice scores "
        "higher without being more robust: the degradation isolates the loss. Scores over other severity sets are "
        "not comparable. Δ: mean over the shared subjects of the model's "
        f"per-subject overall score minus the reference's ({reference_text}); p: two-sided paired Wilcoxon "
        "signed-rank test of the per-subject overall scores (uncorrected, then Bonferroni over the "
        f"{len(tested)} model(s) tested). Δ degradation and its p: the same paired test of the per-subject "
        "degradation (lower is more robust), which leaves the clean Dice out."
    )
    notes.insert(0, f"\\* p ≤ {options.alpha:g} after Bonferroni correction. No test below {MIN_SUBJECTS} paired "
                    "subjects (the exact two-sided p cannot reach 0.05 with 5).")  # fmt: skip
    if reference is None:
        notes.append(f"No tests: {why}.")
    order = list(next(iter(scores.values())).per_corruption["mean"])
    for s in scores.values():
        order += [c for c in s.per_corruption["mean"] if c not in order]
    extra_rows = [
        [name, *(("{:.3f} / {:.3f}".format(*scores[m].per_corruption["mean"][name]))
                 if name in scores[m].per_corruption["mean"] else "-" for m in models)]
        for name in order
    ]  # fmt: skip
    extra = [("Overall / degradation per corruption:", ["Corruption", *(label[m] for m in models)], extra_rows)]
    return Table(f"rood_{net}", f"ROOD-MRI scores ({Net(net).title})", caption, header, rows, notes, extra,
                 list(ROOD_CSV_COLUMNS), csv_rows)  # fmt: skip
