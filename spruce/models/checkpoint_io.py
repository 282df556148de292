"""``AtomicCheckpointIO``: Lightning checkpoints written next to their target and renamed into place.

Lightning's own writer goes through an fsspec transaction whose temporary file lives in ``$TMPDIR``; when that is on
another filesystem than the run directory the final "move" is a copy into the target, so a kill mid-copy leaves a
truncated ``last.ckpt`` in place of the last good one (and the temporary file behind). Here the bytes go to a
temporary file in the target's own directory (``spruce.io.atomic_write``) and ``os.replace`` swaps it in, whatever
``$TMPDIR`` is: a reader, a resume or a crash sees the old checkpoint or the new one, never half of one. Temporary
files a killed run left beside the target are removed by the next successful save.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from spruce.io import atomic_write


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files ``atomic_write`` leaves beside ``path`` when killed mid-write (``.<name>.*.tmp``)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is atomic on any filesystem (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        # Lightning's strategies call this on global rank 0 only (DDP: one writer, the others wait at the barrier of
        # Trainer.save_checkpoint), so removing stale temporaries below cannot race another rank's write.
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        for old in stale_temporaries(path):  # left by a killed earlier save; only this run writes here
            old.unlink(missing_ok=True)
        atomic_write(path, buf.getbuffer().tobytes())
