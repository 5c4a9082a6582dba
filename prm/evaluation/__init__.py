"""Evaluation of PRMs from their scores: step and solution metrics, best-of-N selection, ProcessBench, plots.

Everything here is a pure function over numbers (numpy); no model code. ``prm-eval`` feeds it the
step scores a PRM produced.
"""
