"""What the scripts show on the console: their own lines, not the libraries' logs, and
progress (a tqdm bar on a terminal, else a line with the rate every ``every`` seconds on
stderr, so log files and CI get progress too, without a bar's redraws)."""

from __future__ import annotations

import contextlib
import sys
import time

from absl import flags
from tqdm.auto import tqdm


@contextlib.contextmanager
def progress(desc: str, total: int | None, unit: str, every: float = 30.0, scale: float = 1.0):
    """Yields ``update(n)``: n more units done. ``scale`` divides the counts shown (e.g.
    2**20 with unit "MB" for bytes)."""
    if sys.stderr.isatty():
        with tqdm(total=total and total / scale, desc=desc, unit=unit, leave=False,
                  mininterval=1.0) as bar:  # fmt: skip
            yield lambda n: bar.update(n / scale)
        return
    start = last = time.monotonic()
    done = 0

    def update(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every:
            last = now
            of = f" of {total / scale:,.0f}" if total else ""
            rate = done / scale / (now - start)
            print(f"{desc}: {done / scale:,.0f}{of} {unit} ({rate:,.1f} {unit}/s)",
                  file=sys.stderr, flush=True)  # fmt: skip

    yield update


def quiet_logs() -> None:
    """Library logs (Orbax, absl, JAX backend probing) at warnings only, unless the
    command line asked for ``-v``/``--verbosity``: scripts print their own lines."""
    import logging

    from absl import logging as absl_logging

    verbose = flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 0
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    if not verbose:
        # Orbax logs a write that fails in its background threads with a traceback, then
        # raises it to the caller, whose script reports it in one line.
        logging.getLogger("absl").addFilter(
            lambda record: "/orbax/" not in record.pathname.replace("\\", "/")
        )
        # After such a failure tensorstore completes the save's other writes into Orbax's
        # event loop, closed by then: each would print a traceback.
        default_hook = sys.unraisablehook

        def hook(u):
            if not (isinstance(u.exc_value, RuntimeError)
                    and str(u.exc_value) == "Event loop is closed"):  # fmt: skip
                default_hook(u)

        sys.unraisablehook = hook
