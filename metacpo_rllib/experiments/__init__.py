"""The experiment service: Tune sweeps from YAML, MLflow tracking, the four-algorithm comparison."""
