"""Register an entry point for the test process only, the way an installed distribution
would: a temporary `*.dist-info` directory with an `entry_points.txt`, put on sys.path.
`importlib.metadata.entry_points()` (what `hitl_core.connect` reads) finds it there.
Used for the adapter guide's worked example, which is a module, not an installed package."""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def entry_point(group: str, spec: str, *, import_from: Path) -> Iterator[None]:
    """Within the block, `spec` ("name = module:attr") is an entry point of `group`, and
    `import_from` is on sys.path so the module can be loaded."""
    name = spec.split("=", 1)[0].strip()
    with tempfile.TemporaryDirectory() as site:
        info = Path(site) / f"hitl_test_{name}-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: hitl-test-{name}\nVersion: 0.0\n"
        )
        (info / "entry_points.txt").write_text(f"[{group}]\n{spec}\n")
        added = [site, str(import_from)]
        sys.path[:0] = added
        importlib.invalidate_caches()
        try:
            yield
        finally:
            for path in added:
                sys.path.remove(path)
            importlib.invalidate_caches()
