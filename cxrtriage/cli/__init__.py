"""The Typer command-line interface: the only part of cxrtriage that prints."""
