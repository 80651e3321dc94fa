"""distill-cka: an example third-party plugin for distill (linear CKA match loss)."""

__version__ = "0.1.0"
