"""pytest plugin (entry point `pytest11`): claims markers, options, cached fixtures, report.

Filled in by the claims work; registered now so the entry point exists from the start.
"""
