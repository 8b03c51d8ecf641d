"""nestlearn.eval: evaluation that is not part of the training loop.

* :func:`unigram_log_probs`, :func:`unigram_loss`: the unigram baseline (``baselines``).

Validation perplexity and the per-position loss curve live in :func:`nestlearn.train.evaluate`
(the loop calls them); ``nestlearn eval RUN`` runs them on a saved model.
"""

from nestlearn.eval.baselines import unigram_log_probs, unigram_loss

__all__ = ["unigram_log_probs", "unigram_loss"]
