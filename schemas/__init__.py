"""The contracts of Sluice: input events, output records, their Avro schemas and codec, and errors.

Imports nothing else of ours, so agents and streams can both depend on it.
"""
