"""The SQLite trial store and the exported tables, on hand-made results (no Ray, no training)."""
from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import pickle
import sqlite3
import threading
from pathlib import Path

import pytest
import yaml

from raygap import atomic as atomic_mod
from raygap.atomic import atomic_write
from raygap.cells import fmt
from raygap.export import export_grid
from raygap.render import md_escape, tex_escape
from raygap.grid import load_grid
from raygap.status import status_text
from raygap.store import SCHEMA_VERSION, Store

GRIDS = Path(__file__).resolve().parent.parent / "grids"


def write(tmp_path: Path, doc: dict, name: str = "g.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return p


# ----------------------------------------------------------------------------- store
def test_store_round_trip_on_a_real_sqlite_file(tmp_path):
    db = tmp_path / "sub" / "store.sqlite"
    s = Store(db)
    s.mark_running("k1", {"seed": 0, "method": {"name": "concat"}})
    s.record_epoch("k1", [{"epoch": 0, "val_acc": 0.4}])
    rec = s.get("k1")
    assert rec["status"] == "running" and rec["attempts"] == 1 and rec["history"] == [{"epoch": 0, "val_acc": 0.4}]
    assert rec["config"] == {"seed": 0, "method": {"name": "concat"}} and rec["started"] is not None
    s.save_done("k1", {"acc": 0.5, "f": float("nan")}, [{"epoch": 0}, {"epoch": 1}], 3.0, {"node": "n"})
    other = Store(db)                                 # a second connection sees the committed row
    rec = other.get("k1")
    assert rec["status"] == "done" and rec["metrics"] == {"acc": 0.5, "f": None} and rec["wall_seconds"] == 3.0
    assert rec["info"] == {"node": "n"} and rec["finished"] >= rec["started"] and rec["error"] is None
    assert other.get("nope") is None
    with sqlite3.connect(db) as c:                   # the documented schema, WAL mode
        cols = [r[1] for r in c.execute("PRAGMA table_info(trials)")]
        assert cols == ["key", "status", "config", "metrics", "history", "error", "attempts", "created", "started",
                        "finished", "wall_seconds", "info", "owner", "heartbeat", "lease_until", "checkpoint",
                        "checkpoint_epoch", "token", "beats", "lease_s"]
        assert [r[1] for r in c.execute("PRAGMA table_info(memberships)")] == ["grid", "key", "label", "column", "seed"]
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert json.loads(c.execute("SELECT metrics FROM trials").fetchone()[0]) == {"acc": 0.5, "f": None}


def test_done_is_never_overwritten_by_a_failure(tmp_path):
    s = Store(tmp_path / "store.sqlite")
    s.save_done("k1", {"acc": 0.5}, [], 1.0, {})
    s.save_failed("k1", "late failure\nwith a traceback")
    s.mark_running("k1", {"seed": 0})
    s.record_epoch("k1", [{"epoch": 9}])
    rec = s.get("k1")
    assert rec["status"] == "done" and rec["metrics"] == {"acc": 0.5} and rec["error"] is None and rec["history"] == []
    s.save_failed("k2", "TrialDiverged: nan loss\n  Traceback ...")
    assert s.get("k2")["error"] == "TrialDiverged: nan loss"       # one line
    s.mark_running("k2", {"seed": 0})                                # a retry
    assert s.get("k2")["status"] == "running" and s.get("k2")["attempts"] == 2 and s.get("k2")["error"] is None
    assert s.status_of(["k1", "k2", "k3"]) == {"k1": "done", "k2": "running"}
    assert s.done_keys() == {"k1"}


def test_forget_and_rerun(tmp_path):
    s = Store(tmp_path / "store.sqlite")
    for k in ("a", "b", "c"):
        s.save_done(k, {"acc": 1.0}, [], 1.0, {})
    assert s.forget(["a", "b", "zz"]) == 2
    assert s.done_keys() == {"c"} and s.get("a") is None
    s.mark_running("a", {})
    assert s.get("a")["attempts"] == 1


def test_register_memberships_pending_rows_and_rows_for_grid(tmp_path):
    g = write(tmp_path, {"name": "m", "rows": {"A": {}, "B": {"train": {"epochs": 100}}}, "seeds": [0, 1],
                         "columns": {"data.val_fraction": [0.1]}})
    grid = load_grid(g)
    s = Store(tmp_path / "store.sqlite")
    s.register(grid)
    s.register(grid)                                                  # idempotent
    rows = s.rows_for_grid("m/noprofile")
    assert len(rows) == 4 and [r["label"] for r in rows] == ["A", "A", "B", "B"]
    assert rows[0]["column"] == {"data.val_fraction": 0.1} and rows[0]["status"] == "pending"
    assert rows[0]["config"]["train"]["epochs"] == 100 and rows[0]["attempts"] == 0
    assert len(s.status_of(r["key"] for r in rows)) == 2             # A and B share their trials
    s.save_done(rows[0]["key"], {"acc": 0.9}, [], 1.0, {})
    assert [r["status"] for r in s.rows_for_grid("m/noprofile")] == ["done", "pending", "done", "pending"]
    assert s.grids() == ["m/noprofile"] and s.memberships("m/noprofile")[0]["column"] == {"data.val_fraction": 0.1}
    assert s.forget([rows[1]["key"]]) == 1
    assert [r["status"] for r in s.rows_for_grid("m/noprofile")] == ["done", "new", "done", "new"]
    with sqlite3.connect(tmp_path / "store.sqlite") as c:            # the forgotten row is kept, whole
        (key, record), = c.execute("SELECT key, record FROM forgotten").fetchall()
    assert key == rows[1]["key"] and json.loads(record)["status"] == "pending"
    last = s.last_run("m")
    assert (last["variant"], last["profile"], last["sets"], last["path"]) == ("noprofile", None, [], str(g))
    assert s.add_pending(grid.trials) == 1                             # the forgotten one, back (B's twice: once)
    assert [r["status"] for r in s.rows_for_grid("m/noprofile")] == ["done", "pending", "done", "pending"]
    assert s.get(rows[1]["key"])["config"]["train"]["epochs"] == 100 and s.add_pending(grid.trials) == 0


def test_store_migrates_the_old_membership_column(tmp_path):
    db = tmp_path / "store.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE memberships (grid TEXT NOT NULL, key TEXT NOT NULL, label TEXT NOT NULL, "
                  "col TEXT NOT NULL, seed INTEGER NOT NULL, PRIMARY KEY (grid, key, label, col))")
        c.execute("INSERT INTO memberships VALUES ('g', 'k', 'A', '{}', 0)")
    assert Store(db).memberships("g") == [{"key": "k", "label": "A", "column": {}, "seed": 0}]


def test_store_pickles_as_its_path(tmp_path):
    s = Store(tmp_path / "store.sqlite")
    s.save_done("k", {"acc": 1.0}, [], 1.0, {})
    t = pickle.loads(pickle.dumps(s))
    assert t.path == s.path and t.get("k")["status"] == "done"


def test_readers_do_not_block_on_an_open_write(tmp_path):
    db = tmp_path / "store.sqlite"
    writer = Store(db)
    writer.save_done("k", {"acc": 1.0}, [], 1.0, {})
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")                                    # a write in progress
    raw.execute("UPDATE trials SET status='failed' WHERE key='k'")
    reader = Store(db)                                                # opening and reading do not wait
    assert reader.status_of(["k"]) == {"k": "done"}                   # the last committed state
    raw.execute("ROLLBACK")
    raw.close()


def _read_statuses(path, n, out):
    s = Store(path)
    seen = [len(s.done_keys()) for _ in range(n)]
    out.put(seen)


def test_one_writer_and_a_reader_process(tmp_path):
    db = tmp_path / "store.sqlite"
    writer = Store(db)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_read_statuses, args=(str(db), 300, q))
    p.start()
    threads = [threading.Thread(target=lambda i=i: [writer.save_done(f"k{i}-{j}", {"acc": 0.1}, [], 0.1, {})
                                                    for j in range(50)]) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = q.get(timeout=120)
    p.join(timeout=60)
    assert p.exitcode == 0 and seen == sorted(seen)                   # counts only grow; no lock errors
    assert len(writer.done_keys()) == 100


# ----------------------------------------------------------------------------- cells
def test_cell_format():
    assert fmt([80.0, 82.0, 84.0], 3) == "82.00 ± 2.00 (n=3)"
    assert fmt([70.0], 3) == "70.00 (n=1/3)"
    assert fmt([70.0], 1) == "70.00 (n=1)"
    assert fmt([80.0, 84.0], 3) == "82.00 ± 2.83 (n=2/3)"
    assert fmt([], 3) == "– (0/3)"
    assert fmt([], 3, done=3) == "n/a (n=3)"
    assert fmt([80.0, 82.0, 84.0], 3, complete_n=False) == "82.00 ± 2.00"
    assert fmt([80.0, 82.0, 84.0], 3, with_n=False) == "82.00 ± 2.00"
    assert fmt([0.71234, 0.7], 2, digits=3) == "0.706 ± 0.009 (n=2)"
    from raygap.cells import metric_digits
    assert [metric_digits(m) for m in ("mae", "corr_text", "val_mae", "acc", "acc7", "best_epoch")] == [3, 3, 3, 2, 2, 2]


def test_tex_escape():
    assert tex_escape("cost $α") == r"cost \$$\alpha$"          # a literal $ before math (was "cost \alpha$")
    assert tex_escape("αβ, x†‡") == r"$\alpha\beta$, x$^\dagger{}^\ddagger$"   # one $...$; no double superscript
    assert tex_escape("$$") == r"\$\$"
    assert tex_escape("D&R 50% a_b") == r"D\&R 50\% a\_b"
    assert tex_escape("Ours w/o |g_i|² (β=0)") == r"Ours w/o $|$g\_i$|^2$ ($\beta$=0)"
    assert tex_escape("82.00 ± 2.00") == r"82.00 $\pm$ 2.00"


# ----------------------------------------------------------------------------- exports
@pytest.fixture
def filled(tmp_path):
    g = write(tmp_path, {"name": "ex", "description": "an example",
                         "rows": {"A": {}, "B": {"method": {"name": "warmup_objective"}, "note": "raygap's control"},
                                  "C & D": {"train": {"epochs": 5}}},
                         "columns": {"data.val_fraction": [0.1, 0.2]}, "seeds": [0, 1, 2],
                         "metrics": ["acc", "macro_f1", "data_pct"], "column_labels": {0.1: "V10", 0.2: "V20"}})
    grid = load_grid(g)
    store = Store(tmp_path / "store.sqlite")
    store.register(grid)
    cell = lambda lab, v: [t for t in grid.trials if t.label == lab and t.column["data.val_fraction"] == v]
    for t, acc in zip(cell("A", 0.1), (0.80, 0.82, 0.84), strict=True):
        store.save_done(t.key, {"acc": acc, "macro_f1": acc - 0.1, "data_pct": 100.0}, [], 1.0, {})
    tb = cell("B", 0.2)
    store.save_done(tb[0].key, {"acc": 0.7, "macro_f1": 0.6}, [], 1.0, {})
    store.save_failed(tb[1].key, "TrialDiverged: nan")
    store.mark_running(tb[2].key, tb[2].config.to_dict())
    return grid, store, tmp_path


def test_exports_paper_layout_partial_cells(filled):
    grid, store, tmp = filled
    paths = export_grid(grid, store, tmp / "out")
    assert set(paths) == {"trials.csv", "table.csv", "table.md", "table.tex", "table.json"}
    md = paths["table.md"].read_text()
    assert "| Method | V10 Acc | V10 Macro-F1 | V10 Data % | V20 Acc | V20 Macro-F1 | V20 Data % |" in md
    assert "| A | 82.00 ± 2.00 (n=3) | 72.00 ± 2.00 (n=3) | 100.00 ± 0.00 (n=3) | – (0/3) | – (0/3) | – (0/3) |" in md
    assert "| B \\* | – (0/3) | – (0/3) | – (0/3) | 70.00 (n=1/3) | 60.00 (n=1/3) | n/a (n=1) |" in md
    assert "\\* B: raygap's control" in md and "an example" in md
    rows = list(csv.reader(io.StringIO(paths["table.csv"].read_text())))
    assert rows[0][0] == "Method" and rows[0][-1] == "Note" and len(rows) == 4
    assert rows[1][1] == "82.00 ± 2.00 (n=3)" and rows[2][-1] == "raygap's control" and rows[3][0] == "C & D"


def test_latex_structure(filled):
    grid, store, tmp = filled
    tex = export_grid(grid, store, tmp / "out", formats=("tex",))["table.tex"].read_text()
    assert r"\begin{tabular}{lcccccc}" in tex and r"\toprule" in tex and r"\midrule" in tex
    assert tex.index(r"\bottomrule") < tex.index(r"\end{tabular}") < tex.index("raygap's control")
    assert r"\multicolumn{3}{c}{V10} & \multicolumn{3}{c}{V20}" in tex
    assert r"\cmidrule(lr){2-4} \cmidrule(lr){5-7}" in tex
    assert r"A & 82.00 $\pm$ 2.00 & 72.00 $\pm$ 2.00 & 100.00 $\pm$ 0.00 & -- (0/3)" in tex
    assert r"B$^{*}$ & " in tex and r"70.00 (n=1/3)" in tex and r"C \& D & " in tex
    assert r"$^{*}$ B: raygap's control\par" in tex and r"{\footnotesize" in tex
    body = [ln for ln in tex.splitlines() if ln.endswith(r"\\") and "&" in ln]
    assert all(ln.count(" & ") == 6 for ln in body if "multicolumn" not in ln)   # 1 + 2 x 3 cells
    assert len([ln for ln in body if "multicolumn" not in ln]) == 1 + 3     # metric header + 3 rows


def test_a_description_with_a_newline_stays_inside_its_comment_and_heading(tmp_path):
    # a newline in the description used to end table.tex's "% name: ..." comment, leaving the
    # rest live LaTeX (\input{...}), and table.md's heading, leaving the rest raw Markdown
    g = write(tmp_path, {"name": "lab", "description": "first line\n\\input{/etc/hostname} $x$ *y*",
                         "rows": {"A": {}, "B": {"note": "n"}}, "reference": "B",
                         "columns": {"data.val_fraction": [0.1]}, "seeds": [0, 1], "metrics": ["acc"]})
    grid = load_grid(g)
    store = Store(tmp_path / "store.sqlite")
    store.register(grid)
    for t, acc in zip(grid.trials, (0.5, 0.6, 0.7, 0.9), strict=True):
        store.save_done(t.key, {"acc": acc}, [], 1.0, {})
    paths = export_grid(grid, store, tmp_path / "out", formats=("md", "tex"))
    tex = paths["table.tex"].read_text().splitlines()
    assert tex[0] == r"% lab: first line \input{/etc/hostname} $x$ *y*"
    assert r"% paired differences vs B" in tex
    assert not [ln for ln in tex if "input{" in ln and not ln.startswith("%")], tex
    md = paths["table.md"].read_text().splitlines()
    assert md[0] == r"# lab: first line \\input{/etc/hostname} $x$ \*y\*" and md[1] == ""


def test_trials_csv_one_line_per_membership(filled):
    grid, store, tmp = filled
    text = export_grid(grid, store, tmp / "out", formats=())["trials.csv"].read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(grid.trials) == 3 * 2 * 3
    assert list(rows[0])[:6] == ["label", "data.val_fraction", "seed", "hash", "status", "error"]
    assert {r["status"] for r in rows} == {"done", "failed", "running", "pending"}
    r = next(r for r in rows if r["status"] == "failed")
    assert r["error"] == "TrialDiverged: nan" and r["label"] == "B"
    done = next(r for r in rows if r["label"] == "A" and r["status"] == "done")
    assert float(done["metric.acc"]) in (0.8, 0.82, 0.84) and done["config.optim.lr"] == "0.002"
    assert "config.method.name" in done and "config.resources.cpu" in done


def test_writes_are_atomic_and_leave_no_temp_files(filled, monkeypatch):
    grid, store, tmp = filled
    out = tmp / "out"
    export_grid(grid, store, out)
    before = (out / "table.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.json", "table.md", "table.tex", "trials.csv"]

    def boom(*a, **k):
        raise RuntimeError("interrupted")
    monkeypatch.setattr(atomic_mod.os, "replace", boom)               # die between write and rename
    store.save_done(grid.trials[-1].key, {"acc": 0.1}, [], 1.0, {})
    with pytest.raises(RuntimeError):
        export_grid(grid, store, out)
    assert (out / "table.md").read_text() == before                   # the old file, whole
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.json", "table.md", "table.tex", "trials.csv"]
    monkeypatch.undo()
    atomic_write(out / "x.txt", "hello")
    assert (out / "x.txt").read_text() == "hello"


def test_default_out_dir_is_results_grid_name_variant(filled, monkeypatch):
    grid, store, tmp = filled
    monkeypatch.chdir(tmp)
    paths = export_grid(grid, store, formats=("md",))
    assert paths["table.md"] == Path("results") / "ex" / "noprofile" / "table.md" and paths["table.md"].exists()
    with pytest.raises(ValueError, match=r"unknown table format\(s\) \['pdf'\]: choose from csv, md, tex"):
        export_grid(grid, store, tmp / "o", formats=("pdf",))
    assert not (tmp / "o").exists()                                 # refused before writing anything


def test_status_text(filled):
    grid, store, _ = filled
    st = status_text(grid, store)
    lines = st.splitlines()
    assert "6 cells" not in lines[0] and "18 cells, 18 distinct trials" in lines[0]
    assert lines[1].split() == ["row", "column", "done", "running", "stale", "failed", "interrupted", "missing"]
    assert any(ln.split()[:8] == ["A", "0.1", "3", "0", "0", "0", "0", "0"] for ln in lines)
    assert any(ln.split()[:8] == ["B", "0.2", "1", "1", "0", "1", "0", "0"] for ln in lines)
    assert "total: 4 done, 1 running, 0 stale, 1 failed, 0 interrupted, 12 missing (of 18 distinct trials)" in st
    assert sum("TrialDiverged: nan" in ln for ln in lines) == 1
    failed_line = next(ln for ln in lines if "TrialDiverged" in ln)
    assert "B | 0.2 | seed 1" in failed_line


def test_paper_grid_exports_with_skipped_rows(tmp_path):
    grid = load_grid(GRIDS / "table2.yaml", profile="demo")
    store = Store(tmp_path / "store.sqlite")
    t = next(t for t in grid.trials if t.label == "Ours (Prob Gap)")
    store.save_done(t.key, {"acc": 0.9, "macro_f1": 0.88}, [], 1.0, {})
    paths = export_grid(grid, store, tmp_path / "table2")
    md = paths["table.md"].read_text()
    assert "| Ours (Prob Gap) | 90.00 (n=1/3) | 88.00 (n=1/3) |" in md
    assert "Warm-up objective (raygap control) \\*" in md or "Warm-up objective (raygap control) *" in md
    tex = paths["table.tex"].read_text()
    assert r"\multicolumn{2}{c}{AV-Digits}" in tex and r"Baseline (Concat)" in tex
    # a row whose method does not exist (yet), left out with --skip-missing, is named under the table
    doc = yaml.safe_load((GRIDS / "table2.yaml").read_text())
    doc["rows"]["Next year"] = {"method": {"name": "future_method"}}
    (tmp_path / "future.yaml").write_text(yaml.safe_dump(doc))
    fut = load_grid(tmp_path / "future.yaml", profile="demo", skip_missing=True)
    paths = export_grid(fut, store, tmp_path / "future")
    assert "Not run: Next year (method 'future\\_method' is not implemented)" in paths["table.md"].read_text()
    assert "% not run: Next year" in paths["table.tex"].read_text()
    t3 = load_grid(GRIDS / "table3.yaml", profile="demo")
    tex3 = export_grid(t3, store, tmp_path / "table3", formats=("tex",))["table.tex"].read_text()
    assert "²" not in tex3 and "α" not in tex3 and r"($\alpha$=0)" in tex3
    # Table II's Prob Gap trial is Table III's Full Model: the result shows there too
    assert r"Ours (Full Model) & 90.00 (n=1/3)" in tex3


def test_accuracy_figure_draws_a_regression_history_and_a_figure_error_costs_one_line(tmp_path, capsys):
    from raygap.cli.grids import draw_figures
    from raygap.figures import trial_figures
    hist = [{"epoch": e, "val_mae": 1.0 - 0.1 * e, "val_mae_text": 0.9 - 0.1 * e, "val_corr": 0.1 * e}
            for e in range(3)]
    figs = trial_figures(hist, ["audio", "visual", "text"], tmp_path / "figs", "t")
    assert [p.name for p in figs] == ["t_accuracy.png"] and figs[0].stat().st_size > 1000

    class Broken:
        grid = property(lambda self: 1 / 0)
    assert draw_figures(Broken(), tmp_path / "f") == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "figures not drawn: ZeroDivisionError" in err


def test_a_running_trial_whose_local_driver_is_gone_reads_as_interrupted(tmp_path):
    import subprocess
    import sys

    from raygap.store import owner_of

    s = Store(tmp_path / "store.sqlite")
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_owner = owner_of(p.pid)                 # host:pid:start (clock ticks after boot):PID namespace
    s.mark_running("gone", {"seed": 0}, owner=dead_owner)
    s.mark_running("alive", {"seed": 1})                              # owned by this (live) process
    s.mark_running("remote", {"seed": 2}, owner="another-host:1:t1:4026531836")
    assert s.status_of(["gone", "alive", "remote"]) == {"gone": "running", "alive": "running", "remote": "running"}
    p.kill()
    p.wait()
    assert s.status_of(["gone", "alive", "remote"]) == {"gone": "interrupted", "alive": "running",
                                                       "remote": "running"}   # elsewhere: cannot tell
    assert s.mark_interrupted(["alive", "remote"]) == 1                 # only this driver's own trials
    assert s.get("alive")["status"] == "interrupted" and s.get("remote")["status"] == "running"


def test_a_store_of_the_previous_schema_is_migrated_with_its_rows(tmp_path):
    db = tmp_path / "store.sqlite"
    with sqlite3.connect(db) as c:                                       # the schema before this version
        c.execute("CREATE TABLE trials (key TEXT PRIMARY KEY, status TEXT NOT NULL CHECK (status IN "
                  "('pending', 'running', 'done', 'failed')), config TEXT, metrics TEXT, history TEXT, error TEXT, "
                  "attempts INTEGER NOT NULL DEFAULT 0, created REAL, started REAL, finished REAL, "
                  "wall_seconds REAL, info TEXT)")
        c.execute("INSERT INTO trials (key, status, metrics, attempts) VALUES ('k', 'done', '{\"acc\": 0.5}', 1)")
    s = Store(db)
    assert s.get("k")["status"] == "done" and s.get("k")["metrics"] == {"acc": 0.5}
    s.mark_running("r", {"seed": 0})
    assert s.mark_interrupted(["r"]) == 1 and s.get("r")["status"] == "interrupted"
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # version 4: the shared warm-ups' table
    assert s.warmups(["w"]) == {}
    assert s.record_warmup("w", "/store/warmups/w", 3, "k") is None
    assert s.warmups(["w", "v"]) == {"w": {"wkey": "w", "uri": "/store/warmups/w", "epoch": 3, "leader": "k"}}
    assert s.record_warmup("w", "/other/w", 3, "k2") == "/store/warmups/w"     # the one replaced, to delete
    assert s.drop_warmup("w") == "/other/w" and s.warmups(["w"]) == {} and s.drop_warmup("w") is None


def test_a_read_only_store_reads_and_refuses_writes(tmp_path):
    from raygap.errors import StoreError

    Store(tmp_path / "store.sqlite").save_done("k", {"acc": 1.0}, [], 1.0, {})
    ro = Store(tmp_path / "store.sqlite", readonly=True)
    assert ro.status_of(["k"]) == {"k": "done"}
    with pytest.raises(StoreError) as e:
        ro.save_failed("k", "x")
    assert "opened read-only" in e.value.line()
    with pytest.raises(StoreError) as e:
        Store(tmp_path / "nothing.sqlite", readonly=True)
    assert "no trial store here" in e.value.line() and not (tmp_path / "nothing.sqlite").exists()


def test_the_empty_store_of_a_folder_where_nothing_ran_reads_nothing_and_writes_nothing(tmp_path):
    from raygap.errors import StoreError
    from raygap.store import EmptyStore

    path = tmp_path / "results" / "store.sqlite"
    for s in (EmptyStore(path), pickle.loads(pickle.dumps(EmptyStore(path)))):
        assert s.path == path and s.readonly
        assert (s.records(["k"]), s.status_of(["k"]), s.done_infos(["k"]), s.finished_times(["k"])) == ({},) * 4
        assert (s.get("k"), s.last_run("g"), s.memberships("g/demo"), s.rows_for_grid("g/demo"), s.grids()) == \
            (None, None, [], [], [])
        assert (s.warmups(["w"]), s.held_elsewhere(["k"]), s.done_keys()) == ({}, {}, set())
        with pytest.raises(StoreError, match="opened read-only"):
            s.save_done("k", {"acc": 1.0}, [], 1.0, {})
    assert not (tmp_path / "results").exists()


def test_claims_heartbeats_tokens_and_the_recorded_checkpoint(tmp_path, monkeypatch):
    """Two drivers (two connections, each with its fences and its own watch), an observer's
    monotonic clock faked: a claim holds while its heartbeat moves, lapses once it has stood
    still for the lease as the observer measured it, and the trial changes hands with a new token."""
    import os
    import socket
    import subprocess
    import sys

    from raygap.store import claims as store_mod
    from raygap.store.owners import pid_namespace

    g = write(tmp_path, {"name": "c", "rows": {"A": {}}, "seeds": [0, 1, 2]})
    grid = load_grid(g)
    db = tmp_path / "store.sqlite"
    sa, sb, sc = Store(db), Store(db), Store(db)
    sa.register(grid)
    k0, k1, k2 = [t.key for t in grid.trials]
    sa.save_done(k2, {"acc": 0.5}, [], 1.0, {})
    host, ns = socket.gethostname(), pid_namespace()
    a, b = f"{host}:1:t10:{ns}", f"{host}:2:t20:{ns}"          # two drivers of this machine, both alive here
    monkeypatch.setattr(store_mod, "owner_alive", lambda o: {a: True, b: True}.get(o, False))
    mono = [1000.0]
    monkeypatch.setattr(store_mod.time, "monotonic", lambda: mono[0])

    def cols(key):
        return sa._query("SELECT owner, token, beats, lease_s FROM trials WHERE key=?", (key,))[0]

    assert sa.claim([k0, k1, k2], a, lease_s=120) == ([k0, k1], {})    # a done trial is never claimed
    assert (cols(k0), cols(k1)) == ((a, 1, 1, 120.0), (a, 2, 1, 120.0)) and sa._fences == {k0: 1, k1: 2}
    assert sb.claim([k0, k1], b, lease_s=120) == ([], {k0: a, k1: a})  # never seen before: live
    assert sb.held_elsewhere([k0, k1, k2], b) == {k0: a, k1: a} and sa.held_elsewhere([k0], a) == {}
    mono[0] = 1000.0 + 119
    assert sa.renew([k0], a, lease_s=120) == 1 and cols(k0) == (a, 1, 2, 120.0)   # a heartbeat of k0
    mono[0] = 1000.0 + 121
    assert sb.claim([k0, k1], b, lease_s=120) == ([k1], {k0: a})       # k1 stood still 121 s by b's clock
    assert cols(k1) == (b, 3, 2, 120.0) and sb._fences == {k1: 3}     # a new token: the next of the store
    assert sa.lost([k0, k1]) == [k1] and sb.lost([k1]) == []
    assert sa.mark_running(k1, {"seed": 1}) is False                   # a's writes of k1 are fenced off
    assert sa.release([k1], a) == 0 and cols(k1) == (b, 3, 2, 120.0)
    assert sa.release([k0], a) == 1 and sb.claim([k0], b) == ([k0], {}) and cols(k0) == (b, 4, 3, 120.0)
    assert sa.release([k0], a) == 0                                     # only the owner's own claims
    # a dead owner's claim (a gone process of this machine) is void at once, whatever its lease
    c_ = f"{host}:3:t30:{ns}"
    sb.release([k0, k1], b)
    assert sc.claim([k0], c_, lease_s=10_000) == ([k0], {})
    assert sb.claim([k0], b) == ([k0], {}) and cols(k0) == (b, 6, 5, 120.0)
    # the recorded checkpoint: the earlier one comes back to be deleted; a done trial returns its own
    assert sb.record_checkpoint(k0, "file:///r/ck_e4", 4) == []
    assert sb.record_checkpoint(k0, "file:///r/ck_e4", 4) == []
    assert sb.record_checkpoint(k0, "file:///r/ck_e9", 9) == ["file:///r/ck_e4"]
    assert (sb.get(k0)["checkpoint"], sb.get(k0)["checkpoint_epoch"]) == ("file:///r/ck_e9", 9)
    # ... and a driver that lost k0 neither records one nor is handed b's to delete
    assert sc.record_checkpoint(k0, "file:///r/c_e5", 5) == [] and sc.take_checkpoint(k0) is None
    assert (sb.get(k0)["checkpoint"], sb.get(k0)["checkpoint_epoch"]) == ("file:///r/ck_e9", 9)
    assert sb.record_checkpoint(k2, "file:///r/late", 3) == ["file:///r/late"]
    assert sb.take_checkpoint(k0) == "file:///r/ck_e9" and sb.get(k0)["checkpoint"] is None
    # a real process that has ended is a dead owner (no monkeypatch of the check)
    monkeypatch.undo()
    p = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE, text=True)
    pid = int(p.communicate()[0])
    assert store_mod.owner_alive(f"{host}:{pid}:t123:{ns}") is False
    assert store_mod.owner_alive(store_mod.this_process_owner()) is True
    assert store_mod.owner_alive("elsewhere-host:1:t1:1") is None        # another machine: its heartbeat decides
    me = store_mod.this_process_owner()
    assert store_mod.owner_alive(me.rsplit(":", 1)[0] + ":1") is None   # this host, another PID namespace: too
    assert store_mod.owner_alive(f"{host}:{os.getpid()}:1.00") is None  # an older raygap's owner string: too


def test_every_query_by_key_takes_more_keys_than_sqlite_binds_at_once(tmp_path):
    """40,000 keys (and 1,000 never stored, and repeats) against a connection held to SQLite's
    default limit of 32,766 bound variables: every read and write by key answers for all of
    them, because each goes through the one chunked helper."""
    import os
    import socket

    from raygap.errors import StoreError

    db = tmp_path / "store.sqlite"
    s = Store(db)
    n = 40_000
    keys = [f"k{i:05d}" for i in range(n)]
    from raygap.store.owners import pid_namespace

    gone = f"{socket.gethostname()}:{os.getpid()}:t1:{pid_namespace()}"   # this pid, another start time: gone
    elsewhere = "elsewhere-host:1:t1:1"                        # another machine's driver: its heartbeat decides
    rows = []
    for i, k in enumerate(keys):
        status = ("done", "running", "pending", "failed")[i % 4]
        rows.append((k, status, json.dumps({"i": i}) if status == "done" else None,
                     float(i) if status == "done" else None,
                     {"running": gone, "pending": elsewhere}.get(status),
                     4e9 if status == "pending" else None))
    with sqlite3.connect(db) as c:                             # the rows, written in one go as a store holds them
        c.executemany("INSERT INTO trials(key, status, info, finished, owner, lease_until, attempts) "
                      "VALUES (?,?,?,?,?,?,1)", rows)
        c.executemany("INSERT INTO warmups VALUES (?,?,?,?,?)", [(k, f"file:///w/{k}", 3, k, 0.0) for k in keys])
    s._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)
    with pytest.raises(StoreError, match="too many SQL variables"):   # the limit holds for a query in one piece
        s._query(f"SELECT key FROM trials WHERE key IN ({','.join('?' * n)})", keys)
    asked = keys + [f"absent{i}" for i in range(1000)] + keys[:500]
    done, running, pending, failed = (set(keys[j::4]) for j in range(4))

    recs = s.records(asked)
    assert len(recs) == n and recs["k00004"]["info"] == {"i": 4} and recs["k39999"]["status"] == "failed"
    assert s.status_of(asked) == {**dict.fromkeys(done, "done"), **dict.fromkeys(running, "interrupted"),
                                  **dict.fromkeys(pending, "pending"), **dict.fromkeys(failed, "failed")}
    assert s.done_infos(asked) == {k: {"i": int(k[1:])} for k in done}
    assert s.finished_times(asked) == {k: float(int(k[1:])) for k in done}
    assert s.warmups(asked)["k12345"] == {"wkey": "k12345", "uri": "file:///w/k12345", "epoch": 3, "leader": "k12345"}
    assert len(s.warmups(asked)) == n
    me = f"{socket.gethostname()}:{os.getpid()}:t2:{pid_namespace()}"
    assert s.held_elsewhere(asked, me) == dict.fromkeys(pending, elsewhere)
    claimed, held = s.claim(asked, me)                      # not done, not held: the running and failed ones
    assert sorted(claimed) == sorted(running | failed) and held == dict.fromkeys(pending, elsewhere)
    assert s.renew(asked, me) == 20_000 and s.release(asked, me) == 20_000
    assert s.mark_interrupted(asked, me) == 10_000          # the running rows, now this driver's
    assert s.status_of(keys[1::4]) == dict.fromkeys(running, "interrupted")
    assert s.forget(asked) == n and s.records(asked) == {}
    assert s._query("SELECT count(*), count(DISTINCT key) FROM forgotten") == [(n, n)]


def test_a_disk_full_in_the_middle_of_a_write_is_said_so_and_the_store_stays_usable(tmp_path):
    from raygap.errors import StoreError

    db = tmp_path / "store.sqlite"
    s = Store(db)
    s.save_done("a", {"acc": 1.0}, [], 1.0, {})
    pages = s._db.execute("PRAGMA page_count").fetchone()[0]
    s._db.execute(f"PRAGMA max_page_count={pages}")        # the file may not grow: SQLite's own SQLITE_FULL
    big = [{"epoch": 0, "note": "x" * 200_000}]
    with pytest.raises(StoreError) as e:                    # SQLite rolls this transaction back itself
        s.save_done("b", {"acc": 0.5}, big, 1.0, {})
    assert e.value.line() == (f"{db}: the disk is full; free some space, then run the same command "
                              "(finished trials are kept)")
    s._db.execute("PRAGMA max_page_count=1073741823")        # space again: the same connection writes on
    s.save_done("b", {"acc": 0.5}, big, 1.0, {})
    assert Store(db, readonly=True).status_of(["a", "b"]) == {"a": "done", "b": "done"}


def test_a_commit_that_fails_leaves_no_transaction_open(tmp_path):
    """SQLite may keep a transaction open when its COMMIT fails (disk full, I/O error): the
    store rolls it back, so the connection writes again and holds no lock."""
    from raygap.errors import StoreError

    class CommitFails:                                       # the connection, with one COMMIT that fails
        def __init__(self, db):
            self.db, self.failed = db, False

        def execute(self, sql, *args):
            if sql == "COMMIT" and not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

    db = tmp_path / "store.sqlite"
    s = Store(db)
    s._db = CommitFails(s._db)
    with pytest.raises(StoreError, match="the disk is full"):
        s.save_done("a", {"acc": 1.0}, [], 1.0, {})
    assert not s._db.in_transaction and s.get("a") is None   # rolled back, not left holding the write lock
    s.save_done("b", {"acc": 0.5}, [], 1.0, {})
    assert Store(db, readonly=True).status_of(["a", "b"]) == {"b": "done"}


def test_md_escape_leaves_no_markup_in_a_label():
    assert md_escape("Ours *fast* [v2](x) <b> a|b `c` ~d~ e_f \\") == (
        r"Ours \*fast\* \[v2\](x) \<b> a\|b \`c\` \~d\~ e\_f \\")
    assert md_escape("72.61 ± 0.50 (n=3) †, p < 0.05") == "72.61 ± 0.50 (n=3) †, p < 0.05"   # unchanged       # numbers and marks unchanged
