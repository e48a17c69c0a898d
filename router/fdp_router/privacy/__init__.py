"""Privacy core: events, accounting, admission filter, mechanisms, ledger, audit."""
