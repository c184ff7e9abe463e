"""What ``raygap status`` says of a grid's searched rows (:mod:`raygap.search`), read from the
store's ``searches`` table only (no Ray, no torch, no optuna): per searched (row, column) the
samples finished of the budget, how many ASHA stopped early and how many failed, the samples asked
for and not finished, and the best validation value so far -- or the winner once the budget is
spent, whose table trials are then the row's ordinary cells (:func:`raygap.search.winners_from`)."""
from __future__ import annotations

from .search import FINAL, best_sample


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def search_lines(grid, store) -> list[str]:
    """One line per searched (row, column) of ``grid``, in row then column order."""
    searches = getattr(grid, "searches", None) or {}
    if not searches:
        return []
    records = store.searches(s.search_id(raw) for s in searches.values() for _, raw in s.bases)
    lines = []
    for label, s in searches.items():
        for column, raw in s.bases:
            where = f"  search {label} | {', '.join(str(v) for v in column.values()) or '-'}: "
            rec = records.get(s.search_id(raw))
            samples = (rec or {}).get("samples") or []
            if not samples:
                lines.append(where + f"not started (budget {s.samples} samples, {s.searcher}, scheduler "
                             f"{s.scheduler}): `raygap run` runs it before the row's table trials")
                continue
            n = {k: sum(1 for x in samples if x.get("status") == k) for k in (*FINAL, "asked")}
            final = sum(n[k] for k in FINAL)
            done = (f"{final}/{s.samples} samples" if final <= s.samples else
                    f"{final} samples (more than this grid's budget of {s.samples}: a larger budget ran)")
            text = f"{done} finished ({n['stopped']} stopped early by ASHA, {n['failed']} failed)"
            if n["asked"]:
                text += f", {n['asked']} asked and not finished (run or resumed by the next `raygap run`)"
            best = best_sample(samples, s.mode)
            metric = f"val_{s.metric}"
            winner = rec.get("winner")
            if final >= s.samples and winner is not None:
                value = rec.get("value")
                text += (f": winner chosen: {_params(winner)}"
                         + (f" ({metric} {value:.3f})" if isinstance(value, (int, float)) else "")
                         + f", trained on the table seeds {grid.seeds} as the row's cells")
            elif final >= s.samples:
                text += ": budget spent, no sample finished with a value: no winner, no table cells"
            else:
                text += (f", best {metric} {best['value']:.3f} so far ({_params(best['params'])})" if best
                         else f", no {metric} yet")
                if winner is not None:
                    text += "; the winner of a smaller budget is not used: the search goes on"
            lines.append(where + text)
    return lines
