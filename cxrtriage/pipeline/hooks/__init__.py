"""Predict hooks: each adds fields to the records of a batch (``base`` defines the contract).

Run order: site calibration (10), lungs (20), quality (30), heat maps (40), triage (90). Each module
imports only ``base`` and the packages below the pipeline.
"""
