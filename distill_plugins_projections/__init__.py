"""The built-in projections of distill (student width -> teacher width), one plugin module per kind.

Each module (``linear``, ``identity``) is registered under the ``distill`` entry-point group
exactly as a third-party plugin would be; see ``docs/losses.md``.
"""
