"""The built-in distillation losses of distill, one plugin module per loss family.

Each module (``kd``, ``divergence``, ``hidden``, ``attention``, ``relation``) is registered under the
``distill`` entry-point group exactly as a third-party plugin would be; see ``docs/losses.md`` for
formulas.
"""
