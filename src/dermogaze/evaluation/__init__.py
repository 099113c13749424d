"""Evaluation of trained networks: a checkpoint on a split (:mod:`.evaluate`: ``metrics.json``,
``predictions.csv``, figures), runs side by side (:mod:`.compare`), the report tables (:mod:`.tables`)
and the figures (:mod:`.plots`)."""
