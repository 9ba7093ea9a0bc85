"""Receiving studies as a hospital sends them: the DICOM node (``serve``) and the hot folder (``watch``)."""
