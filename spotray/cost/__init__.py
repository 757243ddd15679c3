"""Cost accounting: prices (on-demand table, spot history), the ledger, the bill, the plan."""
