"""``twinloop export --ckpt_path X --format onnx|torchscript|exported_program [--output F]``.

The checkpoint's network, in eval mode, as a file that runs without this project (and, for ONNX,
without PyTorch), with a dynamic batch size; beside it ``F.json``, what a consumer needs to prepare
an image as training did: class names, input size, channels, resize, crop, mean and std.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from project.checkpoint_io import check_state_dict_fits, read_checkpoint
from project.errors import CheckpointError, MissingPackageError, UserPathError, reported_as_exit
from project.specs import NetworkSpec, grouped

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# torch >= 2.9 exports ONNX through torch.export (dynamo=True), which writes the graph with onnxscript
NEEDS = {"onnx": ("onnx", "onnxscript")}


def load_network(ckpt_path: str | Path) -> tuple[nn.Module, dict]:
    """The network of a twinloop (Lightning) checkpoint, weights loaded, in eval mode; and the checkpoint."""
    checkpoint = read_checkpoint(ckpt_path)
    hp = grouped(checkpoint.get("hyper_parameters") or {})
    if "network" not in hp or "preprocessing" not in checkpoint:
        raise CheckpointError(
            f"{ckpt_path} lacks the hyperparameters or preprocessing an export needs: "
            "export a checkpoint that `twinloop fit` wrote"
        )
    # the architecture alone, eager: the checkpoint brings every weight
    network = replace(NetworkSpec(**hp["network"]), weights=None, channels_last=False, compile=None)
    net = network.build(hp["num_classes"], hp["in_channels"], hp.get("input_hw"))
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    check_state_dict_fits(state, net.state_dict(), ckpt_path)
    net.load_state_dict(state)
    return net.eval(), checkpoint


def sidecar(checkpoint: dict, fmt: str, output: Path, ckpt_path: str | Path) -> dict:
    """What the exported model expects and returns."""
    pre = checkpoint["preprocessing"]
    return {
        "format": fmt,
        "model": output.name,
        "checkpoint": str(ckpt_path),
        "class_names": list(checkpoint.get("class_names") or range(checkpoint["hyper_parameters"]["num_classes"])),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_size": pre["input_size"],
        "channels": pre["channels"],
        "resize": pre["resize"],
        "crop": pre["crop"],
        "mean": pre["mean"],
        "std": pre["std"],
        "input": "float32 (batch, channels, height, width), any batch size: RGB (or gray) pixels scaled to [0, 1], "
        "resized (the shorter side when there is a crop, else to input_size), centre-cropped, then (x - mean) / std",
        "output": "float32 (batch, classes) logits, in the order of class_names; softmax gives probabilities",
    }


def require(fmt: str) -> None:
    missing = [name for name in NEEDS.get(fmt, ()) if not importable(name)]
    if missing:
        raise MissingPackageError(
            f"--format {fmt} needs the package(s) {', '.join(missing)}, which are not installed: "
            "pip install 'twinloop[export]' (onnx, onnxscript, and onnxruntime to run the file)"
        )


def importable(name: str) -> bool:
    try:
        return name in sys.modules and sys.modules[name] is not None or importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def export(net: nn.Module, example: Tensor, fmt: str, output: Path) -> None:
    """Write ``net`` (in eval mode) to ``output`` in ``fmt``, with the batch dimension dynamic."""
    require(fmt)
    batch = torch.export.Dim("batch", min=1, max=65536)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and the exporters' chatter
        if fmt == "onnx":
            torch.onnx.export(
                net,
                (example,),
                str(output),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, example), str(output))
        else:
            torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)), str(output))


def load_exported(path: str | Path, fmt: str):
    """A callable ``(B, C, H, W) float32 tensor -> logits tensor`` running the exported file (ONNX in onnxruntime)."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise MissingPackageError(
                "running an ONNX file needs onnxruntime: pip install 'twinloop[export]'"
            ) from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation
        module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    return lambda x: module(x).detach()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="twinloop export", description=__doc__.split("\n\n")[1])
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `twinloop fit`")
    parser.add_argument("--format", required=True, choices=list(SUFFIXES))
    parser.add_argument("--output", help="file to write (default: the checkpoint's path with .onnx, .pt or .pt2)")
    opts = parser.parse_args(argv)
    with reported_as_exit():
        if not Path(opts.ckpt_path).is_file():
            raise UserPathError(f"--ckpt_path: no such file: {opts.ckpt_path}")
        require(opts.format)
        try:
            net, checkpoint = load_network(opts.ckpt_path)
        except CheckpointError as exc:
            raise CheckpointError(f"--ckpt_path: {exc}") from None
        output = Path(opts.output) if opts.output else Path(opts.ckpt_path).with_suffix(SUFFIXES[opts.format])
        pre = checkpoint["preprocessing"]
        example = torch.randn(2, pre["channels"], *pre["input_size"], generator=torch.Generator().manual_seed(0))
        export(net, example, opts.format, output)
        meta = output.with_name(output.name + ".json")
        meta.write_text(json.dumps(sidecar(checkpoint, opts.format, output, opts.ckpt_path), indent=2) + "\n")
        print(f"wrote {output} and {meta}")


if __name__ == "__main__":
    main()
