"""Delete what belongs only to the job stores that were not chosen.

A rendered project never mentions a backend it does not have. Cookiecutter renders
this file with Jinja and runs it inside the new project; running it again is harmless.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHOSEN_JOB_STORE = "{{ cookiecutter.job_store }}"
PACKAGE_DIR = Path("src", "{{ cookiecutter.package_name }}")
STORE_DIR = PACKAGE_DIR / "jobs" / "store"

# Files and directories that exist for one store only; a new store is one more entry.
STORE_FILES: dict[str, tuple[Path, ...]] = {
    "sqlite": (STORE_DIR / "sqlite.py",),
    "memory": (STORE_DIR / "memory.py",),
}


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree; one that is already gone is fine."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_store_files(store: str) -> None:
    """Delete every file that only `store` uses."""
    for path in STORE_FILES[store]:
        remove_path(path)


def main() -> None:
    for store in STORE_FILES:
        if store != CHOSEN_JOB_STORE:
            remove_store_files(store)


if __name__ == "__main__":
    main()
