"""Drift monitoring: how a site's results (scores, priorities, quality checks, exclusions) move away from a reference."""
