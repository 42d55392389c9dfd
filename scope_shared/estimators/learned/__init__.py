"""Learned anchor estimator: shared logistic and length models over neighbour features, fitted on the store.

For a query and a candidate model, the features come from the anchors the engine retrieved and from the
query itself:

- ``model``: logit of the model's overall accuracy;
- ``knn``: logit of the model's similarity-weighted accuracy on its ``k`` nearest anchors, shrunk toward
  its overall accuracy (the anchor-statistics estimate);
- ``difficulty``: how the nearest anchors went for *every* model, as the weighted mean of each anchor's
  mean residual ``correct - model accuracy`` (far less noisy than one model's record on ten anchors);
- ``text``: a ridge regression of each anchor's easiness on the query embedding and length and structure
  statistics of the query text (:func:`text_stats`). Easiness is the item parameter of a Rasch model
  ``P(correct) = sigmoid(ability_model + easiness_anchor)`` fitted on all anchor outcomes; unlike a mean
  residual it is not biased when different models answered different anchors.

``p_correct = sigmoid(w . features + b)`` with one weight vector shared by all models, so a model added to
the store later (even with outcomes on a few anchors) is estimated without any training step of its own.
Output length is a shared Huber regression in ``log1p`` space on the model's neighbour lengths, its
overall length, the other models' length residuals on the neighbours and the query's input tokens.

A query that is itself an anchor (the same text, e.g. an answer recorded through ``engine.record``) moves
``exact_weight`` of the way to each model's recorded outcome and length on it. Leave-one-out fitting never
sees such repeats (and near-duplicates can disagree: Winogrande twins differ by one word and flip the
answer), so this weight is a stated choice, not a fitted one.

Fitting is leave-one-out over the anchors themselves: each anchor is treated as a query whose neighbours
are the other anchors, so the weights (and the calibration they imply) come from the anchors only. Call
:meth:`LearnedEstimator.fit` explicitly, or let the engine bind its store: the estimator then loads the fit
saved with the store, or fits, in a background thread (until it is ready the engine estimates with its
fallback and says so in each decision), and refits in the background when the number of anchors changes
by more than ``refit_growth`` (the previous fit keeps serving meanwhile).

Modules: ``features`` (text statistics, neighbour arrays and features, the small numerics), ``params`` (a
fit's parameters, report, JSON form and state key), ``fit`` (leave-one-out fitting), ``predict`` (a fit
applied to query contexts) and ``estimator`` (:class:`LearnedEstimator`: configuration and lifecycle).
"""

from scope_shared.estimators.learned.estimator import LearnedEstimator
from scope_shared.estimators.learned.features import LENGTH_FEATURES, P_FEATURES, text_stats
from scope_shared.estimators.learned.params import FitReport

__all__ = ["FitReport", "LearnedEstimator", "P_FEATURES", "LENGTH_FEATURES", "text_stats"]
