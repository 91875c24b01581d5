"""``twinloop-reference fit|validate|test -c CONFIG [overrides]``: the reference loop on the same
configs; see ``project.reference.config`` for how a run is built."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from project.errors import reported_as_exit
from project.reference.config import load_run
from project.runs import named_run_checkpoint, newest_last_checkpoint, slurm_run_name


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="twinloop-reference",
        description="Run the plain-PyTorch reference loop on a twinloop config. Other options are the "
        "config options of `twinloop` (-c CONFIG, --model.*, --data.*, --trainer.*).",
    )
    parser.add_argument("command", choices=["fit", "validate", "test"])
    parser.add_argument(
        "--ckpt_path", default=None, help="checkpoint (Lightning or reference) to resume, validate or test; fit: last"
    )
    parser.add_argument("--log_dir", default=None, help="TensorBoard and checkpoint directory")
    parser.add_argument(
        "--run_name",
        default=None,
        help="log into <log root>/reference/RUN_NAME, the same directory every time (a restart with "
        "--ckpt_path last resumes it); under SLURM it defaults to slurm-<job id>",
    )
    opts, rest = parser.parse_known_args(argv)
    with reported_as_exit():
        run = load_run(
            rest, Path(opts.log_dir) if opts.log_dir else None, checkpoint_brings_weights=bool(opts.ckpt_path)
        )
        ckpt_path = opts.ckpt_path
        run_name = opts.run_name or (slurm_run_name() if opts.log_dir is None else None)
        if run_name:
            run.trainer.log_dir = run.trainer.settings.log_root / "reference" / run_name
        if opts.command == "fit" and (run_name or opts.log_dir):
            last = named_run_checkpoint(run.trainer.log_dir, ckpt_path)
            ckpt_path = str(last) if last is not None else ckpt_path
        elif opts.command == "fit" and ckpt_path == "last":  # the newest run's last.ckpt, resumed into that run
            last = newest_last_checkpoint(run.trainer.settings.log_root / "reference")
            run.trainer.log_dir = last.parent.parent
            ckpt_path = str(last)
        if opts.command == "fit":
            run.trainer.fit(run.model, run.datamodule, ckpt_path)
        else:
            results = getattr(run.trainer, opts.command)(run.model, run.datamodule, ckpt_path)
        if not run.trainer.is_global_zero:  # under torchrun rank 0 speaks for the run
            return
        if opts.command != "fit":
            width = max(len(k) for k in results)
            for k, v in results.items():
                print(f"{k:<{width}}  {v:.6f}")
        elif run.trainer.top_k.best_model_path:
            print(f"best checkpoint: {run.trainer.top_k.best_model_path}")
        print(f"logs: {run.trainer.log_dir}")


if __name__ == "__main__":
    main()
