"""Experiments: compare (runs, results, report) and the pre-flight planner."""
