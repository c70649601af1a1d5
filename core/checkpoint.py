"""Crash-safe files: atomic writes, weights-only loads, safetensors weights, training state.

Every write goes to a temporary file in the target's directory, is flushed and fsynced, then
``os.replace``-d over the target and the directory is fsynced: a crash or an exception mid-write
leaves the previous file intact. Every ``torch.load`` here uses ``weights_only=True``; training
state therefore holds only tensors, numbers, strings, lists and dicts (RNG states are tensors).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch
from torch import nn

TMP_PREFIX = ".tmp-"
"""Prefix of the temporary files atomic writes create next to their target."""
STATE_FORMAT_VERSION = 1
"""Version of the training-state layout written by :func:`save_training_state`."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``writer(fileobj)`` atomically (temp file, fsync, replace, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda f: f.write(data))


def save_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN/inf are refused: not valid JSON)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a state dict (tensors, numbers, strings, lists, dicts only)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (never unpickles arbitrary objects)."""
    return torch.load(str(path), map_location=map_location, weights_only=True)


# --------------------------------------------------------------------------------------------
# Weights-only export (safetensors)
# --------------------------------------------------------------------------------------------

def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Atomically export ``model.state_dict()`` as safetensors (tied tensors are stored per name)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, str]:
    """Load safetensors weights into ``model`` (on its device); returns the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path), device="cpu")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    model.load_state_dict(tensors, strict=strict)
    return meta


# --------------------------------------------------------------------------------------------
# RNG and training state
# --------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """torch CPU and (when available) per-device CUDA RNG states, as uint8 tensors."""
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"].to("cpu", torch.uint8))
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in cuda])


def save_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                        scheduler: Any | None, epoch: int, loader: Any | None = None,
                        extra: dict[str, Any] | None = None) -> None:
    """Atomically checkpoint everything a resumed run needs to continue bit-identically.

    ``loader`` is anything with ``state_dict()`` (e.g. :class:`core.data.DeviceLoader`);
    ``extra`` must be weights_only-loadable (numbers, strings, lists, dicts, tensors).
    """
    state = {
        "version": STATE_FORMAT_VERSION,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "loader": loader.state_dict() if loader is not None else None,
        "extra": dict(extra or {}),
    }
    save_state(path, state)


def load_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                        scheduler: Any | None = None, loader: Any | None = None,
                        restore_rng: bool = True,
                        check_extra: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Restore a :func:`save_training_state` checkpoint in place; returns ``{"epoch", "extra"}``.
    ``check_extra`` sees the saved ``extra`` before anything is restored, and raises to refuse the state."""
    state = load_state(path)
    if state.get("version") != STATE_FORMAT_VERSION:
        raise ValueError(f"{path}: training-state version {state.get('version')}, expected {STATE_FORMAT_VERSION}")
    if check_extra is not None:
        check_extra(state["extra"])
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if loader is not None and state["loader"] is not None:
        loader.load_state_dict(state["loader"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {"epoch": int(state["epoch"]), "extra": state["extra"]}
