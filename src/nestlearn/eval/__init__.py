"""nestlearn.eval: evaluation of language models and the synthetic tasks.

* :func:`evaluate`, :class:`EvalResult`, :func:`token_losses`: validation loss, perplexity and
  the per-position loss curve (``lm``); the training loop calls them, ``nestlearn eval RUN`` runs
  them on a saved model.
* :func:`unigram_log_probs`, :func:`unigram_loss`: the unigram baseline (``baselines``).
* :mod:`nestlearn.eval.tasks`: the synthetic task registry.
"""

from nestlearn.eval.baselines import unigram_log_probs, unigram_loss
from nestlearn.eval.lm import EvalResult, evaluate, token_losses

__all__ = ["EvalResult", "evaluate", "token_losses", "unigram_log_probs", "unigram_loss"]
