"""Where the shared DLMC sample lives: the library's one resolver (``spruce.sparse.dlmc``), or a path that does not
exist (tests that need it skip)."""
from pathlib import Path

from spruce.sparse.dlmc import find_dlmc

DLMC = find_dlmc() or Path("DLMC-not-found")
