"""One long-lived process that runs ``fednas`` commands for the hostile-input harness.

Starting Python and importing torch costs seconds per command; this process pays it once
and then runs each command (``fednas.cli.main``) in its own working folder, reporting the
exit code, what it printed, any traceback, the wall time and how far the peak resident
memory rose during the command (Linux: ``/proc/self/clear_refs`` resets the peak).

Protocol: one JSON object per line on stdin (``{"argv": [...], "cwd": "..."}``); one reply
per command on stdout, on a line starting with ``REPLY_TAG`` (other output on stdout, from
C libraries for instance, is skipped by the reader). The address space is capped a few GB
above the start, so a runaway allocation fails here instead of exhausting the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import time
import traceback

REPLY_TAG = "@@fednas-worker@@ "
HEADROOM_BYTES = 6 * 2**30  # address space allowed above the worker's own after imports


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _run(argv: list[str]) -> dict:
    from fednas.cli import main

    out, err = io.StringIO(), io.StringIO()
    tb = ""
    _reset_peak()
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException:  # noqa: BLE001 - the harness reports whatever escaped main()
        rc, tb = -1, traceback.format_exc()
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    return {"rc": rc, "stdout": out.getvalue()[-3000:], "stderr": err.getvalue()[-3000:], "traceback": tb[-6000:],
            "seconds": round(seconds, 3), "peak_growth_mb": round(max(peak - before, 0) / 1024, 1)}


def serve() -> None:
    import fednas.cli  # noqa: F401 - imports paid once, before the first command
    import torch  # noqa: F401

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _status_kb("VmSize") * 1024 + HEADROOM_BYTES
    if hard == resource.RLIM_INFINITY or cap < hard:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    real_stdout = sys.stdout
    real_stdout.write(REPLY_TAG + json.dumps({"ready": True}) + "\n")
    real_stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        os.chdir(request["cwd"])
        reply = _run(request["argv"])
        real_stdout.write(REPLY_TAG + json.dumps(reply) + "\n")
        real_stdout.flush()


if __name__ == "__main__":
    # run as a script, this folder is sys.path[0]; tests/search_spaces would shadow the package
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(os.path.realpath(__file__))]
    serve()
