"""After the verdicts: summary tables, the HTML report, history, trends, alerts, merging runs."""
