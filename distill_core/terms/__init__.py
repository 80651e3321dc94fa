"""Loss terms: KD (dense or chunked token KD), hard labels, intermediate and custom matches.

- :mod:`~distill_core.terms.token_kd`: chunked token-level KD, a pure function over rows;
- :mod:`~distill_core.terms.kd`: the KD term (the configured plugin on logits, dense or chunked);
- :mod:`~distill_core.terms.hard_label`: the student model's own losses;
- :mod:`~distill_core.terms.matches`: intermediate and custom matches bound to their losses and
  projections;
- :mod:`~distill_core.terms.loss`: all of them weighted into one :class:`~distill_core.step.StepLoss`.

Importing this package imports none of its modules (so the adaptors and the cache can use the
functional core without loading the rest).
"""
