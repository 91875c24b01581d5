"""``twinloop-reference fit|validate|test -c CONFIG [overrides]``: the reference loop on the same
configs; see ``project.reference.config`` for how a run is built."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from project.errors import reported_as_exit
from project.reference.config import load_run


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="twinloop-reference",
        description="Run the plain-PyTorch reference loop on a twinloop config. Other options are the "
        "config options of `twinloop` (-c CONFIG, --model.*, --data.*, --trainer.*).",
    )
    parser.add_argument("command", choices=["fit", "validate", "test"])
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to validate or test (Lightning or reference)")
    parser.add_argument("--log_dir", default=None, help="TensorBoard and checkpoint directory")
    opts, rest = parser.parse_known_args(argv)
    if opts.command == "fit" and opts.ckpt_path:
        parser.error("--ckpt_path: the reference loop does not resume a fit; use it with validate or test")
    with reported_as_exit():
        run = load_run(rest, Path(opts.log_dir) if opts.log_dir else None)
        if opts.command == "fit":
            run.trainer.fit(run.model, run.datamodule)
        else:
            results = getattr(run.trainer, opts.command)(run.model, run.datamodule, opts.ckpt_path)
            width = max(len(k) for k in results)
            for k, v in results.items():
                print(f"{k:<{width}}  {v:.6f}")
        print(f"logs: {run.trainer.log_dir}")


if __name__ == "__main__":
    main()
