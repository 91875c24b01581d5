"""Checkpoint files: written so that a kill or a full disk never costs the previous one, and read
back as tensors and plain data only, so that a file can neither run code nor fail without its name.

``atomic_torch_save`` is the one writer of both loops (Lightning's through ``AtomicCheckpointIO``,
which the CLI gives every Trainer; the reference trainer directly), ``read_checkpoint`` the one
reader, and ``check_class_names`` / ``check_state_dict_fits`` the checks of a checkpoint against the
data and the network it is given to (``check_state_dict_fits`` checks pretrained weights too).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import secrets
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from project.errors import CheckpointError

# Temp files are hidden and end in .tmp, so that no `*.ckpt` glob (Lightning's search for "last"
# included) ever takes one for a checkpoint: ".<name>@<host>@<pid>@<random>.tmp".
TEMP_SUFFIX = ".tmp"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that leaves ``path`` holding either its previous content or ``obj``,
    whole, whatever happens during the save.

    The bytes go to a temp file beside ``path`` (the same filesystem, so the rename is atomic and
    never a copy, and nothing goes to $TMPDIR); the file is fsynced, renamed over ``path`` with
    ``os.replace``, and the directory fsynced, so the rename survives a power cut too. Temp files
    that killed writers left in the directory are removed first. On any error the temp file is
    removed, ``path`` is untouched, and a ``CheckpointError`` names it.
    """
    path = Path(path)
    # Serialised in memory first, as Lightning's own writer does: torch's zip writer turns a failed
    # write into a RuntimeError without its errno, and a plain file write keeps it (ENOSPC, EFBIG).
    data = io.BytesIO()
    torch.save(obj, data)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path.parent)
        tmp = path.parent / f".{path.name}@{socket.gethostname()}@{os.getpid()}@{secrets.token_hex(4)}{TEMP_SUFFIX}"
        # O_EXCL: a fresh file of our own; 0o666 less the umask, the mode torch.save(path) would give
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_directory(path.parent)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) not in (path, tmp) else ""
        raise CheckpointError(f"cannot write the checkpoint {path}: {exc.strerror or exc}{where}") from exc
    finally:
        if tmp is not None:  # any failure, KeyboardInterrupt included: no half-written file stays
            with contextlib.suppress(OSError):
                tmp.unlink()


def fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where directories cannot be fsynced (Windows, some FUSE)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove the temp files that writers on this host left in ``folder`` when they were killed
    (their process is gone); files of live writers and of other hosts stay. Returns what went."""
    removed = []
    host = socket.gethostname()
    for candidate in folder.glob(f".*{TEMP_SUFFIX}"):
        parts = candidate.name[: -len(TEMP_SUFFIX)].rsplit("@", 3)
        if len(parts) != 4 or parts[1] != host or not parts[2].isdigit() or process_alive(int(parts[2])):
            continue
        with contextlib.suppress(FileNotFoundError):  # another writer may clean up at the same time
            candidate.unlink()
            removed.append(candidate)
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint file, loaded with ``weights_only=True``: tensors and plain data, no code runs.

    A file that is missing, empty, truncated, corrupt, holds other Python objects, or is no
    checkpoint at all gives a ``CheckpointError`` that names it and says which.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line for line in str(exc).splitlines() if "GLOBAL" in line), "").strip()
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain data, and loading them could run "
            f"code: refused{f' ({detail})' if detail else ''}"
        ) from None
    except Exception as exc:  # a zip reader error, an EOFError, a KeyError from a stray pickle: all one thing here
        first = (str(exc).splitlines() or [""])[0].split(". ")[0][:200]
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt): {type(exc).__name__}: {first}"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a twinloop or Lightning checkpoint: it has no state_dict")
    return checkpoint


def check_class_names(checkpoint: Mapping, data_class_names: Sequence[str], path: str | os.PathLike) -> None:
    """The data's classes must be the checkpoint's, in the same order: label i means the same class
    to both. Checkpoints without class names (older ones) are not checked."""
    saved = checkpoint.get("class_names")
    if saved and list(saved) != list(data_class_names):
        raise CheckpointError(
            f"the classes differ: the checkpoint {path} was trained on {_names(saved)}, "
            f"but the data has {_names(data_class_names)}; use the data the checkpoint was trained on"
        )


ANOTHER_MODEL = ". It was saved from another model: pass the config (--model.*) it was trained with"


def check_state_dict_fits(
    found: Mapping,
    expected: Mapping,
    path: str | os.PathLike,
    network: str = "the network of this config",
    advice: str = ANOTHER_MODEL,
) -> None:
    """``found`` (a checkpoint's state_dict, or pretrained weights) must load strictly into
    ``network``, whose state_dict is ``expected``: the same keys, and tensors of the same shapes.
    Else a ``CheckpointError``: ``path`` does not fit ``network``, how many keys are missing,
    unexpected or of another shape and the first of each, then ``advice``."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [
        f"{k} is {tuple(found[k].shape)} where the network has {tuple(expected[k].shape)}"
        for k in expected
        if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{len(keys)} {what} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
            if keys
        ]
        raise CheckpointError(f"{path} does not fit {network}: {'; '.join(parts)}{advice}")


def _names(names: Sequence[str], most: int = 20) -> str:
    shown = ", ".join(repr(str(n)) for n in list(names)[:most])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > most else ''}]"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O through ``atomic_torch_save`` and ``read_checkpoint``.

    Lightning's own ``TorchCheckpointIO`` writes to ``tempfile.mkstemp()`` in $TMPDIR and then
    ``shutil.move``s: across filesystems that is a copy over the previous checkpoint, which a kill
    truncates, and a kill before it leaves the temp file in $TMPDIR. Remote paths keep Lightning's
    way, loaded with ``weights_only=True`` too.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        # weights_only is always True: a checkpoint that needs more is refused, never run
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path, map_location)
