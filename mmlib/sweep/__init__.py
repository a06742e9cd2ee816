"""Running sweeps: a table's cells and seeds planned into jobs (mmlib.sweep.plan), each job a fresh process
(mmlib.sweep.jobs), run on this machine's workers or on a Ray cluster, stopped in time."""
