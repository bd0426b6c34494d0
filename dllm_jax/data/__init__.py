"""Data: tokenizers and Grain pipelines."""
