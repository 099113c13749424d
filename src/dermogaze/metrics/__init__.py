"""Metrics: pure functions on arrays and tensors, beside the accumulators that feed them a split.

Import the module you need; this package imports none of them (``dermogaze.metrics.clinical``
needs neither torch nor a model)::

    module        what it measures                                                    paper / design
    diagnosis     melanoma vs rest: AUC, AP, sensitivity, specificity, accuracy;      §4.1, Eq. 21
                  the refusal of NaN or infinite model outputs
    structures    IoU, mAP@IoU over thresholds, GT pairing and confusion matrix,      §4.1, Eq. 20, Fig. 6
                  per-structure Jaccard, ISIC 2017 Task 2 superpixel AUC,             docs/design.md §6
                  ISIC 2018 Task 2 Jaccard
    accumulator   EvaluationAccumulator: an evaluation pass, batch by batch, into     docs/design.md §6
                  every metric of the two modules above (the ``metrics.json`` keys)
    clinical      operating points, threshold rules, bootstrap intervals,             beyond the paper
                  calibration, temperature scaling, DeLong's test of two AUCs
    explanation   pointing game, relevance mass and lift, gaze ablation,              docs/design.md §6b (§4.4 by eye)
                  deletion/insertion; the gaze of a step; ExplanationAccumulator
    scanpath      gaze sequences as scanpaths: MultiMatch against human eye           design §6b (§5: future work)
                  tracking, stability under the 8 flips/rotations
    ood           out-of-distribution score: Mahalanobis distance of the pooled       beyond the paper
                  encoder features to the training split's, validation threshold

Report tables of these numbers are in :mod:`dermogaze.evaluation.tables`.
"""
