"""Whole-epoch metrics over the validation predictions."""
