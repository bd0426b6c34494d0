"""Denoising samplers."""
