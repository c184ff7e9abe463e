"""Figures from a finished trial's history (matplotlib, no display needed).

* ``fig_fit``: the mixture fitted after warm-up over the histogram of the z-scored gaps
  (the paper's Fig. 3);
* ``fig_evolution``: the gap histogram at every refit, with the fitted components'
  weights and means (Fig. 5);
* ``fig_accuracy``: validation accuracy of the fused prediction and of each modality per
  epoch, with the stage switch marked (Fig. 6);
* ``fig_table``: a whole table per metric -- each row's mean ± std over seeds, seeds as dots,
  one panel per column.

Every refit of ``gap_adaptive`` logs ``gap_hist``/``gap_hist_edges`` and ``fit_*`` in its
epoch record (docs/method.md, Observability), so any finished trial can be drawn.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from .atomic import atomic_write, atomic_write_with, refuse_links_in
from .cells import metric_label
from .metrics import shown_metric


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """PNG written atomically, with the user's umask; a symlink at ``path`` is replaced,
    never written through."""
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)


def component_pdf(x: np.ndarray, family: str, mu: float, sigma: float, nu: float | None) -> np.ndarray:
    if family == "lmm":
        return np.exp(-np.abs(x - mu) / sigma) / (2 * sigma)
    if family == "smm" and nu:
        from scipy.stats import t

        return t.pdf(x, nu, loc=mu, scale=sigma)
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def fits(history: list[dict]) -> list[dict]:
    return [h for h in history if "gap_hist" in h]


def fig_fit(history: list[dict], path: Path, title: str = "") -> Path | None:
    recs = fits(history)
    if not recs:
        return None
    r = recs[0]
    plt = _plt()
    edges = np.asarray(r["gap_hist_edges"])
    counts = np.asarray(r["gap_hist"], float)
    width = np.diff(edges)
    dens = counts / max(counts.sum(), 1) / width
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(edges[:-1], dens, width=width, align="edge", alpha=0.4, color="grey", label="z-scored gaps")
    x = np.linspace(edges[0], edges[-1], 400)
    nus = r.get("fit_nu") or [None, None]
    total = np.zeros_like(x)
    for k, (name, color) in enumerate((("balanced (k=0)", "tab:blue"), ("imbalanced (k=1)", "tab:red"))):
        y = r["fit_pi"][k] * component_pdf(x, r["fit_family"], r["fit_mu"][k], r["fit_sigma"][k], nus[k])
        total += y
        ax.plot(x, y, color=color, label=f"{name}: pi={r['fit_pi'][k]:.2f} mu={r['fit_mu'][k]:.2f}")
    ax.plot(x, total, color="black", lw=1, label=f"{r['fit_family']} mixture")
    ax.set_xlabel("normalised modality gap")
    ax.set_ylabel("density")
    ax.set_title(title or f"mixture fit at epoch {r['fit_epoch']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def fig_evolution(history: list[dict], path: Path, title: str = "", max_panels: int = 6) -> Path | None:
    recs = fits(history)
    if not recs:
        return None
    idx = np.unique(np.linspace(0, len(recs) - 1, min(max_panels, len(recs))).round().astype(int))
    plt = _plt()
    fig, axes = plt.subplots(1, len(idx), figsize=(2.6 * len(idx), 2.8), sharey=True, squeeze=False)
    for ax, i in zip(axes[0], idx, strict=True):
        r = recs[i]
        edges = np.asarray(r["gap_hist_edges"])
        # back to raw gap units so panels share an axis: raw = mean + std * z
        raw = r["gap_mean"] + r["gap_std"] * edges
        counts = np.asarray(r["gap_hist"], float)
        ax.bar(raw[:-1], counts / counts.sum(), width=np.diff(raw), align="edge", alpha=0.6)
        ax.set_title(f"epoch {r['fit_epoch']}\nw1>0.5: {r['frac_w1_gt_half']:.2f}", fontsize=8)
        ax.set_xlabel("gap", fontsize=8)
    axes[0][0].set_ylabel("share of samples")
    fig.suptitle(title or "modality gap during adaptive training", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def fig_accuracy(history: list[dict], modalities: list[str], path: Path, title: str = "") -> Path:
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    name = shown_metric({k for h in history for k in h}, "val_")     # accuracy, or MAE for a regression target
    ax.plot(ep, [h.get(f"val_{name}", float("nan")) for h in history], color="black", label="fusion")
    for m in modalities:
        ax.plot(ep, [h.get(f"val_{name}_{m}", float("nan")) for h in history], label=m)
    switch = next((h["epoch"] for h in history if h.get("stage") in ("adaptive", "purify")), None)
    if switch is not None:
        ax.axvline(switch - 0.5, color="grey", ls="--", lw=1, label="switch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy" if name == "acc" else "validation MAE")
    ax.set_title(title or f"{'accuracy' if name == 'acc' else 'MAE'} per modality")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def trial_figures(history: list[dict], modalities: list[str], out_dir: Path, stem: str, title: str = "") -> list[Path]:
    made = [fig_accuracy(history, modalities, out_dir / f"{stem}_accuracy.png", title)]
    for fn, suffix in ((fig_fit, "fit"), (fig_evolution, "gap_evolution")):
        p = fn(history, out_dir / f"{stem}_{suffix}.png", title)
        if p:
            made.append(p)
    return made


def _slug(s: str) -> str:
    keep = "".join(c if (c.isascii() and c.isalnum()) else "_" for c in s)
    return "_".join(p for p in keep.split("_") if p)[:60] or "row"


def unique_slugs(texts) -> dict[str, str]:
    """text -> its file-name form (:func:`_slug`), kept apart where two texts share one: those
    get a short hash of the text ("Ours α" and "Ours β" are both ``Ours``: ``Ours_1a2b3c``...),
    so no figure is drawn over another's."""
    texts = list(dict.fromkeys(texts))
    slugs = {t: _slug(t) for t in texts}
    count: dict[str, int] = {}
    for v in slugs.values():
        count[v] = count.get(v, 0) + 1
    return {t: (v if count[v] == 1 else f"{v}_{hashlib.sha256(t.encode()).hexdigest()[:6]}")
            for t, v in slugs.items()}


INDEX = ".drawn.json"      # figures/<INDEX>: what each figure was drawn from, so unchanged ones are kept


def _load_index(out_dir: Path) -> dict:
    import json

    try:
        data = json.loads((out_dir / INDEX).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _fresh(index: dict, name: str, sig: str, out_dir: Path) -> bool:
    entry = index.get(name) or {}
    # a figure replaced by anything but the PNG written here (a link, a folder) is drawn again
    return entry.get("sig") == sig and all((out_dir / f).is_file() and not (out_dir / f).is_symlink()
                                           for f in entry.get("files") or ["?"])


def _col(trial) -> str:
    return "_".join(str(v) for v in trial.column.values())


def cell_prefixes(grid) -> dict[tuple[str, str], str]:
    """(row label, the cell's column values joined by ``_``) -> how its figures' names begin
    (``<row>_<column>``, then ``_seed<n>_<kind>.png``), in the grid's trial order."""
    names = unique_slugs(t.label for t in grid.trials)
    cols = unique_slugs(_col(t) for t in grid.trials)
    return {(t.label, _col(t)): f"{names[t.label]}_{cols[_col(t)]}" if _col(t) else names[t.label]
            for t in grid.trials}


CELL_KINDS = ("fit", "gap_evolution", "accuracy")     # a cell's figures (trial_figures), in the order shown


class Figures(list):
    """The figures of a grid (paths); ``drawn``: how many were (re)drawn this time."""
    drawn = 0


def grid_figures(table, out_dir: Path) -> Figures:
    """For every (row, column) cell of a grid the figures of its first finished seed, and one
    figure of the whole table per metric (:func:`fig_table`), from ``table`` (the records an
    export read once, :class:`~raygap.table.Table`). A figure whose inputs did not change since
    it was drawn (the same finished trials; the index is ``figures/.drawn.json``) is kept, not
    drawn again."""
    import json

    grid, done = table.grid, table.done_records()
    out_dir = Path(out_dir)
    refuse_links_in(out_dir.parent, out_dir.name)        # a figures folder leading out, or a link in it: nothing drawn
    index = _load_index(out_dir)
    new_index: dict = {}
    out = Figures()
    finished = {k: rec["finished"] for k, rec in done.items()}
    seen = set()
    prefixes = cell_prefixes(grid)
    for t in grid.trials:
        cell = (t.label, tuple(t.column.items()))
        if cell in seen or t.key not in finished:
            continue
        seen.add(cell)
        col = _col(t)
        stem = f"{prefixes[(t.label, col)]}_seed{t.seed}"
        sig = f"{t.key}:{finished[t.key]}"
        if _fresh(index, stem, sig, out_dir):
            new_index[stem] = index[stem]
        else:
            rec = done[t.key]
            if not rec.get("history"):
                continue
            mods = t.config.data.modalities or [k[len("val_acc_"):] for k in rec["history"][0]
                                                if k.startswith("val_acc_")]
            made = trial_figures(rec["history"], mods, out_dir, stem, f"{t.label} | {col} | seed {t.seed}")
            new_index[stem] = {"sig": sig, "files": [p.name for p in made]}
            out.drawn += len(made)
        out += [out_dir / f for f in new_index[stem]["files"]]
    if finished:
        combos, cells = table.combos, table.cells
        metric_names = unique_slugs(grid.metrics)
        for m in grid.metrics:
            name = f"table_{metric_names[m]}"
            data = {"rows": grid.row_labels, "columns": [grid.column_header(c) for c in combos],
                    "values": [[cells[(r, ci, m)].values for ci in range(len(combos))] for r in grid.row_labels]}
            sig = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
            if not _fresh(index, name, sig, out_dir):
                fig_table(data, m, out_dir / f"{name}.png", f"{grid.description or grid.name}")
                out.drawn += 1
            new_index[name] = {"sig": sig, "files": [f"{name}.png"]}
            out.append(out_dir / f"{name}.png")
    if new_index != index:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / INDEX, json.dumps(new_index, indent=1, sort_keys=True), root=out_dir.parent)
    return out


def fig_table(data: dict, metric: str, path: Path, title: str = "") -> Path:
    """The table as a figure: one panel per column, one line per row: the mean over seeds with
    a bar of one standard deviation either side, and each seed's value as a dot."""
    plt = _plt()
    rows, cols = data["rows"], data["columns"]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols) + 2.4, 0.38 * len(rows) + 1.4),
                             sharey=True, squeeze=False)
    y = np.arange(len(rows))[::-1]
    for ci, ax in enumerate(axes[0]):
        for ri, row in enumerate(rows):
            vals = np.asarray(data["values"][ri][ci], dtype=float)
            if not len(vals):
                continue
            mean = vals.mean()
            std = vals.std(ddof=1) if len(vals) > 1 else 0.0
            ax.errorbar([mean], [y[ri]], xerr=[[std], [std]], fmt="o", color="black", ms=5, capsize=3, zorder=3)
            jitter = (np.arange(len(vals)) - (len(vals) - 1) / 2) * 0.08
            ax.scatter(vals, y[ri] + jitter, s=12, color="tab:blue", alpha=0.7, zorder=2)
        ax.set_title(cols[ci], fontsize=9)
        ax.set_xlabel(metric_label(metric), fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(rows, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
