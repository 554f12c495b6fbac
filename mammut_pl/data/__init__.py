"""Datasets, tokenizers and the embedded demo world."""
