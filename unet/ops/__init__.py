"""Orchestration around the pipeline: what drives git and DVC for a run, never part of a stage."""
