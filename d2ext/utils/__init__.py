"""Helpers of the tools: metric plots, benchmark timing."""
