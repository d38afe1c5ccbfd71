"""Triton deployment: model repository writer, Python-backend models, local server launcher."""

from __future__ import annotations

from .repository import PLATFORMS, RepoOptions, verify_repository, write_repository

__all__ = ["PLATFORMS", "RepoOptions", "verify_repository", "write_repository"]
