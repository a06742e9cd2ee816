"""What several test modules share: small run parameters, fixture runs, real processes, notebook checks."""
