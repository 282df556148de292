"""Where the shared DLMC sample lives: ``$SPRUCE_DLMC``, else ``<repo>/../shared/dlmc``, else /work/shared/dlmc."""
import os
from pathlib import Path


def dlmc_dir() -> Path:
    env = os.environ.get("SPRUCE_DLMC")
    if env:
        return Path(env)
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "dlmc"
    return beside_repo if beside_repo.is_dir() else Path("/work/shared/dlmc")


DLMC = dlmc_dir()
