"""Reporting: finished runs collected into results/, gathered into the paper's table cells, rendered as tables,
figures and comparisons by the report's notebooks (mmlib.report.render)."""
