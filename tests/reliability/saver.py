"""A checkpoint writer to kill: started once by the tests (torch imported once), it forks one child
per request, and each child saves a checkpoint over and over until it is killed.

Requests come on stdin, one JSON object a line:
``{"writer": "function"|"plugin", "path": ..., "tmpdir": ..., "progress": ..., "fsize_limit": null}``.
The reply is the child's pid. The child sets ``TMPDIR``, then saves ``{"step": i, "state_dict": ...}``
(a few MB) to ``path`` with ``atomic_torch_save`` or through ``AtomicCheckpointIO``, and after each
save that returned appends ``i`` to ``progress``. With ``fsize_limit`` it saves once under that
RLIMIT_FSIZE (a real write failure, EFBIG) and writes the outcome to ``progress`` instead.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile

import torch

from project.checkpoint_io import AtomicCheckpointIO, atomic_torch_save

WEIGHTS = torch.randn(1024, 1024)  # 4 MB, made once, shared with every child


def save_forever(request: dict) -> None:
    os.environ["TMPDIR"] = request["tmpdir"]
    tempfile.tempdir = None  # re-read TMPDIR, as a fresh process would
    plugin = AtomicCheckpointIO()
    step = 0
    while True:
        step += 1
        checkpoint = {"step": step, "state_dict": {"net.weight": WEIGHTS, "net.step": torch.tensor(step)}}
        if request["writer"] == "plugin":
            plugin.save_checkpoint(checkpoint, request["path"])
        else:
            atomic_torch_save(checkpoint, request["path"])
        with open(request["progress"], "a") as f:
            f.write(f"{step}\n")


def save_once_under_limit(request: dict) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize_limit"], hard))  # the soft limit: it can go back
    try:
        atomic_torch_save({"state_dict": {"net.weight": WEIGHTS}}, request["path"])
        outcome = "saved"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    with open(request["progress"], "w") as f:
        f.write(outcome)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped at once: a killed pid is gone
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                (save_once_under_limit if request.get("fsize_limit") else save_forever)(request)
            finally:
                os._exit(0)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
