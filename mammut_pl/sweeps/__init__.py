"""Sweeps and their analysis: the paper's ablations as Optuna studies (`python -m mammut_pl.sweep`).

- `spec`: a sweep file (sweeps/NAME.yaml) read and validated; each stage's config;
- `study`: the Optuna study (storage, sampler, pruner, resume, workers, SIGTERM);
- `trial`: one trial (pretrain, then the downstream fine-tunes) and its MLflow runs;
- `run`: a whole sweep, as the command line runs it;
- `results`, `stats`, `scaling`: the results table, seed intervals, scaling-law fits;
- `ablations`, `plots`: sweeps read back from MLflow, tables and plots (the ablation notebook).
"""
