"""Experiments built from the library: the demo and its report, Table 3, hyperparameter sweeps, and the
launcher of child training processes they share."""
