"""Evaluation: metrics, reports of model performance against labels, and site calibration."""
