"""`mcdrop evaluate`: a model's accuracy, calibration and uncertainty on a labelled set.

labelled_sets (reading labelled and unlabelled data for a model output), evaluation (the run and
its per-head report), metrics (evaluation metrics over labelled sets: ECE, Brier, AUROC, ...) and
report (report.json, report.md and the plots; matplotlib, the `evaluate` extra).
"""
