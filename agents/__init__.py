"""Narrow-scope LLM agents and the LLM client layer. Knows nothing about Kafka."""
