"""Distillation: a small student trained on the labels and a teacher's (or an ensemble's) soft scores."""
