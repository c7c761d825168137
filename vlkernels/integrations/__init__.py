"""Integrations with training frameworks: switch their losses to vlkernels' in one call."""

from vlkernels.integrations.open_clip import OpenClipPatch, patch_open_clip

__all__ = ["OpenClipPatch", "patch_open_clip"]
