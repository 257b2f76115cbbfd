"""Ensembles of trained models: members from a tune run's top trials or listed runs, combined by mean,
fitted weights or a stacked logistic regression (fitted on the validation split only)."""
