"""Metric computations, one module per group of metrics."""
