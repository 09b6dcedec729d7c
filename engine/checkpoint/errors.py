"""Errors raised while reading or converting checkpoint trees."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint tree is incomplete or does not match the expected layout.

    The message always names the file and, where it applies, the key and the expected and
    actual shapes, so that a user holding a 100 GB tree knows which file to fix.
    """
