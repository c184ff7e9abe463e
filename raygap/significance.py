"""Paired comparisons with a grid's ``reference`` row (and with the row a row names in
``versus:``), and their text.

Each other row minus the reference (and each ``versus`` row minus the row it names), seed by seed (the same seed is the same split,
initialisation and data order: the comparison is paired), per column and metric: the mean
difference, its 95 % interval and a paired t-test's p-value (scipy's ``ttest_rel``), the
p-values adjusted by Benjamini-Hochberg (scipy's ``false_discovery_control``) within each
metric's comparisons of the table; a design quantity (``data_pct``) is reported, not tested. See :func:`paired_comparisons` for why these.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics

from .cells import DASH, is_done, is_percent, metric_digits, metric_label, seed_values

SIGNIFICANT = "‡"          # adjusted p < 0.05 (not "*": the row footnotes use it)
COMPARISON_TEST = ("paired t (scipy ttest_rel), 95 % interval, Benjamini-Hochberg per metric, design quantities "
                   "untested, a spread under half a test sample is no spread")      # part of the inputs' digest
DESIGN = {"data_pct": "the share of data kept"}   # set by the method's design, not an outcome: reported, not tested


class Comparisons(list):
    """The rows of :func:`paired_comparisons`; ``inputs``: the digest of what they were computed from."""
    inputs = ""


def compared_pairs(grid) -> list[tuple[str, str]]:
    """(row, the row it is compared with): every row but the reference against the reference,
    then each row against the row its ``versus:`` names (unless that is the reference)."""
    pairs = []
    if grid.reference and grid.reference in grid.row_labels:
        pairs += [(label, grid.reference) for label in grid.row_labels if label != grid.reference]
    versus = getattr(grid, "versus", {}) or {}
    pairs += [(label, versus[label]) for label in grid.row_labels
              if versus.get(label) in grid.row_labels and versus[label] != grid.reference]
    return pairs


def paired_comparisons(grid, records: dict, known: dict | None = None) -> Comparisons:
    """Every row other than ``grid.reference`` against it, and every row with ``versus: Y``
    against Y (:func:`compared_pairs`), per column and metric, over the
    seeds both have done (``records``: key -> stored record of the grid's trials): n, the mean
    of the per-seed differences (row - reference), its 95 % interval and the p-value of a
    paired t-test, and p adjusted over the table's comparisons of that metric (Benjamini-Hochberg;
    one family per metric, design quantities outside every family).

    Why these: a seed fixes the split, the initialisation and the data order of both rows, so
    the differences are paired, and pairing removes the seed-to-seed spread that dominates the
    tables' std. With the grids' 3 seeds a rank test cannot reject at all (the smallest
    two-sided p of Wilcoxon's signed-rank test at n = 3 is 0.25); the t-test can, assuming the
    differences are roughly normal, which 3 values cannot check. BH controls the share of false
    discoveries among a table's many comparisons (Holm's family-wise control would be
    stricter still). ``note`` says when nothing can be concluded: fewer than 2 pairs, or the
    same difference in every seed (no spread -- within half a test sample, see :func:`_no_spread`:
    the t statistic is undefined, or rests on rounding).

    ``known``: the comparisons an earlier export stored in ``table.json`` (``{"inputs", "rows"}``).
    When the inputs -- every pair of per-seed values, and how they are tested -- are the same,
    its rows are the result and scipy.stats, which costs most of a cached re-run's second to
    import, is not imported. The result's ``inputs`` is the digest to store with the rows."""
    out = Comparisons()
    compared = compared_pairs(grid)
    if not compared:
        return out
    combos = grid.column_combos()
    pairs = []                  # (row, other row, column, metric, row values, other's values, tolerance) per seed
    for label, other in compared:
        for col in combos:
            for m in grid.metrics:
                a = seed_values(grid, records, label, col, m)
                r = seed_values(grid, records, other, col, m)
                seeds = sorted(set(a) & set(r))
                pairs.append((label, other, grid.column_header(col), m, [a[s] for s in seeds], [r[s] for s in seeds],
                              _no_spread(m, _n_test(grid, records, (label, other), col))))
    out.inputs = hashlib.sha256(json.dumps([COMPARISON_TEST, pairs]).encode()).hexdigest()[:16]
    if known and known.get("inputs") == out.inputs and isinstance(known.get("rows"), list):
        out += [dict(row) for row in known["rows"]]
        return out
    from scipy import stats

    for label, other, column, m, a, r, tol in pairs:
        d = [x - y for x, y in zip(a, r)]
        row = {"row": label, "versus": other, "column": column, "metric": m, "n": len(d),
               "mean_diff": statistics.fmean(d) if d else None, "ci_low": None, "ci_high": None,
               "p": None, "p_adj": None, "note": ""}
        if len(d) < 2:
            row["note"] = f"n={len(d)}: too few paired seeds"
        elif m in DESIGN:
            row["note"] = f"{DESIGN[m]}: reported, not tested"
        elif max(d) - min(d) <= tol:
            row["note"] = ("the same difference in every seed" if abs(statistics.fmean(d)) > tol
                           else "identical in every seed")
        else:
            res = stats.ttest_rel(a, r)
            ci = res.confidence_interval(0.95)
            row.update(p=float(res.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))
        out.append(row)
    for m in grid.metrics:               # one family per metric: Acc's discoveries are not diluted by F1's
        tested = [row for row in out if row["p"] is not None and row["metric"] == m]
        if tested:
            for row, q in zip(tested, stats.false_discovery_control([row["p"] for row in tested])):
                row["p_adj"] = float(q)
    return out


def _n_test(grid, records: dict, labels, col: dict) -> int | None:
    """The fewest test samples any done trial of these rows' cells in ``col`` was scored on."""
    ns = [rec["info"]["n_test"] for label in labels for t in grid.cell(label, col)
          if is_done(rec := records.get(t.key)) and isinstance((rec.get("info") or {}).get("n_test"), int)]
    return min(ns) if ns else None


def _no_spread(metric: str, n_test: int | None) -> float:
    """The largest spread of per-seed differences that is no spread: for a metric counted over
    test samples (accuracy, F1: shown in percent), half of what one test sample moves it by,
    0.5 * 100 / n_test -- an equal count difference then reads as equal although x100 left it a
    last bit apart; otherwise (or with n_test unknown) float noise only."""
    if is_percent(metric) and n_test:
        return 50.0 / n_test
    return 1e-9


def comparison_text(c: dict, digits: int = 2) -> str:
    """``+1.23 [-0.50, 2.96] p=0.21 (adj 0.40)``; ``+1.00 (every seed)``; ``n=1: too few``."""
    if c["mean_diff"] is None:
        return DASH
    d = f"{c['mean_diff']:+.{digits}f}"
    if c["p"] is None:
        return f"{d} ({c['note']})" if c["n"] >= 2 else f"{d} (n={c['n']})"
    return (f"{d} [{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}] p={c['p']:.2g}"
            f" (adj {c['p_adj']:.2g}){' ' + SIGNIFICANT if c['p_adj'] < 0.05 else ''}")


def against_reference(grid, comps: list[dict]) -> list[dict]:
    """The comparisons with the reference row (the first section under a table)."""
    return [c for c in comps if c.get("versus", grid.reference) == grid.reference]


def against_versus(grid, comps: list[dict]) -> list[dict]:
    """The comparisons of rows with the row their ``versus:`` names (the second section)."""
    return [c for c in comps if c.get("versus", grid.reference) != grid.reference]


def comparison_table(grid, comps: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One line per compared pair of ``comps`` (all against the reference, or all ``versus``
    pairs): the row's label, or ``row − other`` for a ``versus`` pair."""
    combos = grid.column_combos()
    header = ["Method"] + [f"{grid.column_header(c)} {metric_label(m)}" for c in combos for m in grid.metrics]
    by = {(c["row"], c.get("versus", grid.reference), c["column"], c["metric"]): c for c in comps}
    pairs = list(dict.fromkeys((c["row"], c.get("versus", grid.reference)) for c in comps))
    body = [[label if other == grid.reference else f"{label} − {other}"]
            + [comparison_text(by[(label, other, grid.column_header(col), m)], metric_digits(m))
               for col in combos for m in grid.metrics]
            for label, other in pairs]
    return header, body


def comparison_note(grid, comps: list[dict], versus: bool = False) -> str:
    """How one section's differences were computed: ``comps`` is that section's rows
    (:func:`against_reference` or :func:`against_versus`), ``versus`` which section; the
    adjusted p-values' family is every comparison of the table, both sections."""
    n_tested = sum(c["p"] is not None for c in comps)
    ns = sorted({c["n"] for c in comps})
    few = (f" With n = {max(ns)} seeds the test has {max(ns) - 1} degree(s) of freedom: only a large, consistent "
           "difference reaches p < 0.05, and a difference that does not is not shown to be absent."
           if ns and max(ns) <= 5 else "")
    what = ("Each row minus the row it is set against (its `versus:` in the grid, e.g. a tuned row minus the same "
            "method's fixed row)" if versus else f"Each row minus {grid.reference}")
    two = bool(grid.reference) and any(grid.versus.get(r) not in (None, grid.reference) for r in grid.row_labels)
    return (f"{what}, seed by seed (same seed: same split, initialisation and data order), "
            f"mean difference [95 % interval], paired t-test p (scipy ttest_rel), adjusted by Benjamini-Hochberg "
            + (f"within each metric's comparisons of both sections ({n_tested} tested in this one)" if two
               else f"within each metric's comparisons ({n_tested} tested in all)")
            + f"; {SIGNIFICANT} adjusted p < 0.05."
            + "".join(f" {metric_label(m)} is {DESIGN[m]}, set by the method's design: reported, not tested."
                      for m in grid.metrics if m in DESIGN) + few)


def comparisons_csv(comps: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["row", "versus", "column", "metric", "n", "mean_diff", "ci_low", "ci_high", "p",
                                        "p_adj", "note"], lineterminator="\n")
    w.writeheader()
    w.writerows(comps)
    return buf.getvalue()
