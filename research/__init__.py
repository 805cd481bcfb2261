"""Research tooling beside the package: ablations, the results page and their reports."""
