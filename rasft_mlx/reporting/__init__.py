"""The run report (report.html), the comparison page (compare.html) and experiment trackers."""
