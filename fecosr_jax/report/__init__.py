"""Reporting: the results dict and per-user ranks (results), the tests against `local`
(significance), Markdown (markdown), plots (plots), pairs of methods (method_pairs) and a
sweep's rows (sweep_results)."""
