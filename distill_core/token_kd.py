"""Chunked token-level KD; the implementation lives in :mod:`distill_core.terms.token_kd`.

Kept so code that imports ``distill_core.token_kd`` (its documented home until the loss terms
became one package) works unchanged.
"""

from distill_core.terms import token_kd as _token_kd
from distill_core.terms.token_kd import *  # noqa: F403 (this module is only a second name for them)

__all__ = list(_token_kd.__all__)
