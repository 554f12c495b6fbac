"""mammut_pl: train, adapt and ablate MaMMUT with Lightning, Optuna and MLflow."""
