"""Labeled evaluation data for Sluice's agents: support tickets and invoices with known answers.

The data lives in JSON Lines next to this package so it can be reviewed in a diff; ``documents``
turns the invoices into the PDFs and plain-text emails a producer would really send.
"""
