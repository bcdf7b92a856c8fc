"""Resumable multi-run pipelines that Python users import (modality-agnostic): the
dynamic-pruning sweep (dynamic_sweep.py)."""
