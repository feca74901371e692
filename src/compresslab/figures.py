"""Writing matplotlib figures to disk atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def save_png(fig, path, **savefig) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) via a temp file and ``os.replace``,
    so a reader never sees a half-written image. ``savefig``: options for ``fig.savefig``
    (``dpi``, ``bbox_inches``). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", **savefig)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
