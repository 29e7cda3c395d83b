"""The faust application: settings, topics, the per-event pipeline, routing, dead letters, CLI.

Knows nothing about prompts; calls agents through their public methods.
"""
