"""``raygap VERB ...`` (also ``python -m raygap``): :func:`main` parses the command line, runs
the verb and turns its errors into exit codes.

Exit codes: 0 done; 1 a trial failed (one summary line says which and why);
2 bad input (one line naming the file, the key and the problem; no traceback).

One module a job: ``parser`` (every verb's arguments), ``train`` (``raygap train``), ``grids``
(what the grid verbs share), ``run`` (``raygap run``), ``results`` (``status``, ``export``,
``report``), ``pull`` (``raygap pull``), ``datasets`` (``prepare``, ``cache``), ``init`` (``raygap
init``) and ``info`` (``list``, ``--version``).
"""
from __future__ import annotations

import os
import sys

from .. import interrupts
from ..errors import ConfigError, DataError, StoreError
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    interrupts.install()        # SIGINT, SIGTERM and SIGHUP stop every verb the same way
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"raygap: error: {e.line()}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"raygap: data error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"raygap: results error: {e.line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raygap: interrupted ({interrupts.last_signal() or 'SIGINT'})", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``raygap`` console script and ``python -m raygap``: :func:`main`, then exit.

    Once Ray has been imported, the process ends with ``os._exit`` after flushing: raygap
    has shut Ray down by then, and a Ray start-up cut short by a signal leaves C++ threads
    whose destructors abort the interpreter's normal exit ("terminate called without an
    active exception", exit -6) -- which would replace raygap's exit code."""
    code = main()
    if "ray" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
