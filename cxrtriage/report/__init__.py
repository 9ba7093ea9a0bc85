"""Outputs: results tables, overlays, HTML/PDF reports and DICOM objects."""
