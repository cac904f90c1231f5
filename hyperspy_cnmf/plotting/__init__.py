"""Matplotlib figures of hyperspy_cnmf (imported on use)."""
