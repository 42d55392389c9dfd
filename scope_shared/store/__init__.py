"""The anchor store: anchor questions, their embeddings and every model's recorded outcomes, on Chroma.

Layout: :mod:`~scope_shared.store.chroma` (client, collections, HNSW settings, transport errors),
:mod:`~scope_shared.store.records` (how an anchor and its outcomes sit in one record),
:mod:`~scope_shared.store.anchors` (:class:`AnchorStore`), :mod:`~scope_shared.store.totals` (running
outcome totals; their sums in :mod:`~scope_shared.store.sums`, their batch journal in
:mod:`~scope_shared.store.journal`) and :mod:`~scope_shared.store.state` (the side collection). This package is
the only code that knows Chroma's API, and it never imports the estimators, the policy or the engine.
"""

from scope_shared.store.anchors import DEFAULT_COLLECTION, AddReport, AnchorStore
from scope_shared.store.records import anchor_id
from scope_shared.store.totals import StatsCheck

__all__ = ["DEFAULT_COLLECTION", "AddReport", "AnchorStore", "StatsCheck", "anchor_id"]
