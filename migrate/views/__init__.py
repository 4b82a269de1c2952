"""Views: status, report, runbook and dry runs, read-only over the journal's records."""
