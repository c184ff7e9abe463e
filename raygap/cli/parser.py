"""The argument parser of ``raygap``: every verb, its arguments and their help, each verb tied
to the function that runs it (``args.func``). argparse's own errors are one line, exit 2."""
from __future__ import annotations

import argparse
import os

from .datasets import cmd_cache, cmd_prepare
from .grids import RESULTS
from .init import cmd_init
from .info import REGISTRIES, cmd_list, version_line
from .pull import cmd_pull
from .results import cmd_export, cmd_report, cmd_status
from .run import cmd_run
from .train import cmd_train

DESCRIPTION = "The command line: ``raygap VERB ...`` (also ``python -m raygap``)."


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"raygap: {message}\n")


class _Version(argparse.Action):
    """``--version``, read only when asked (package metadata lookups cost a little)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit(0)


def _at_least(lowest: int, what: str):
    """An argparse type: an integer of at least ``lowest`` (else argparse's one line, exit 2)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects an integer, got {text!r}") from None
        if n < lowest:
            raise argparse.ArgumentTypeError(f"expects {what} (at least {lowest}), got {n}")
        return n
    return parse


def _key_values(sp, flag: str, help: str) -> None:
    """A repeatable ``FLAG KEY=VALUE`` option (``--set``, ``--option``), read by
    :func:`raygap.dotted.key_values`."""
    sp.add_argument(flag, action="append", metavar="KEY=VALUE", help=help)


def _grid_args(sp) -> None:
    """What every grid verb takes: the grid files (one or several: ``grids/table*.yaml``), the
    profile and ``--set`` items that shape them, the results folder, and ``--force`` for their tables."""
    sp.add_argument("grid", nargs="+", help="a grid file (grids/table2.yaml), or several: one run, one report")
    sp.add_argument("--profile", help="overlay grids/profiles/NAME.yaml (demo, demo_tuned, paper)")
    _key_values(sp, "--set", "override a trial key in every trial")
    sp.add_argument("--skip-missing", action="store_true",
                    help="drop rows whose method is not implemented (they are listed, never silently)")
    sp.add_argument("--results", default=RESULTS, help="results directory (store.sqlite, tables)")
    sp.add_argument("--force", action="store_true",
                    help="replace tables on disk even with a table holding fewer done cells")


def build_parser() -> argparse.ArgumentParser:
    from ..render import FORMATS
    from ..runner import TRACKERS

    p = _Parser(prog="raygap", description=DESCRIPTION)
    p.add_argument("--version", action=_Version, nargs=0, help="print raygap's, torch's and Ray's versions and exit")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="run one trial in this process (no Ray)")
    t.add_argument("config")
    _key_values(t, "--set", "override a config key (dotted)")
    t.add_argument("--out", help="trial directory (default results/train/<hash>); resumes from its checkpoint")
    t.add_argument("--fresh", action="store_true", help="discard an existing checkpoint in the trial directory")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="run a grid's missing trials as Ray Tune trials and export its table "
                                       "(several grids: their distinct trials in one run)")
    _grid_args(r)
    r.add_argument("--address", help="join an existing Ray cluster (else $RAY_ADDRESS, else an embedded local one)")
    r.add_argument("--storage", help="Tune storage: a local path, s3://BUCKET/PREFIX (endpoint from "
                   "AWS_ENDPOINT_URL_S3 or ?endpoint_override=HOST:PORT&scheme=http), gs:// or a shared filesystem; "
                   "checked with a probe object before Ray starts")
    r.add_argument("--dry-run", action="store_true", help="print the trials, their hashes and which are done")
    r.add_argument("--rerun", action="append", metavar="HASH",
                   help="run these stored trials again (a hash prefix from --dry-run, 'all', or 'stale': those "
                        "whose method's code changed since they ran; repeat the option "
                        "or separate with commas); their old rows are kept in the store's `forgotten` table")
    r.add_argument("--max-failures", type=_at_least(0, "a number of retries"), default=1,
                   help="retries of a trial after an error of its own (default 1); "
                        "the loss of its node is not counted (docs/cluster.md)")
    r.add_argument("--no-shared-warmups", action="store_true",
                   help="every trial trains its own warm-up (default: trials with the same warm-up share one; "
                        "the results are the same either way)")
    r.add_argument("--num-cpus", type=_at_least(1, "a number of CPUs"), help="CPUs of the embedded local Ray instance (default: all)")
    r.add_argument("--tracker", choices=TRACKERS, default="none",
                   help="also log every epoch through Ray Tune's logger callback (TensorBoard event files in each "
                        "trial folder, MLflow or W&B runs); mlflow and wandb are optional extras")
    r.add_argument("-q", "--quiet", action="count", default=0, help="only failures and the end")
    r.add_argument("-v", "--verbose", action="count", default=0, help="also a line per trial epoch")
    r.add_argument("--progress-every", type=float, default=60.0, metavar="S",
                   help="without a terminal: print the grid line (done, left, ETA) every S seconds (default 60)")
    r.set_defaults(func=cmd_run)

    stt = sub.add_parser("status", help="what is done, running, failed, left")
    _grid_args(stt)
    stt.set_defaults(func=cmd_status)

    ex = sub.add_parser("export", help="write the paper-layout table again from the store")
    _grid_args(ex)
    ex.add_argument("--format", choices=FORMATS, help="print this format (default: write all)")
    ex.add_argument("--storage", help="also copy the tables written to the store's mirror there (as `run --storage`)")
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="write report.md: ours beside the paper's numbers, significance, figures, "
                                          "settings (several grids: one report-PROFILE.md over them all)")
    _grid_args(rp)
    rp.set_defaults(func=cmd_report)

    pl = sub.add_parser("pull", help="fetch the store and tables a run with --storage mirrored there")
    pl.add_argument("--storage", required=True, help="the --storage of the run: a local path, s3://, gs://")
    pl.add_argument("--results", default=RESULTS,
                    help="results directory to fetch into (a store there is merged with the mirrored one)")
    pl.set_defaults(func=cmd_pull)

    pr = sub.add_parser("prepare", help="build a dataset's layout from the public downloads")
    pr.add_argument("dataset")
    pr.add_argument("raw_dir")
    pr.add_argument("out_dir")
    _key_values(pr, "--option", "dataset-specific option")
    pr.add_argument("--force", action="store_true",
                    help="replace split lists in OUT_DIR that differ from those this prepare makes (says which)")
    pr.set_defaults(func=cmd_prepare)

    ls = sub.add_parser("list", help="what raygap ships and the plug-ins add: methods, datasets, mixtures, "
                                     "backbones, fusions (each with where it comes from), grids, profiles")
    ls.add_argument("what", choices=[*REGISTRIES, "grids", "profiles"])
    ls.add_argument("files", nargs="*", metavar="FILE",
                    help="grid or trial config files: the plug-ins their `plugins:` name are listed too")
    ls.set_defaults(func=cmd_list)

    it = sub.add_parser("init", help="write a project of one's own into DIR: a method and a dataset as plug-in "
                                     "files, a grid beside raygap's baselines, a profile, a README and a test")
    it.add_argument("dir", metavar="DIR", help="a new or empty folder")
    it.set_defaults(func=cmd_init)

    ca = sub.add_parser("cache", help="decode a prepared dataset into the tensor cache (data.pipeline: cache)")
    ca.add_argument("dataset")
    ca.add_argument("--root", help="the prepared layout (default: $RAYGAP_DATA/DATASET)")
    ca.add_argument("--frames", type=int, nargs="+", metavar="N",
                    help="frames per clip, one cache each (default: the dataset's num_frames)")
    ca.add_argument("--side", type=int, default=0, help="side of the cached frames (default 0: the image size)")
    ca.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    _key_values(ca, "--option",
                "a data key of the dataset that changes what is cached (e.g. sample_rate=22050 for ave)")
    ca.set_defaults(func=cmd_cache)
    return p

