"""Versioned prompt files: ``agents/prompts/<name>.v<N>.md``.

Prompts live in files, not inline strings, so a change is a reviewable diff and a new version is a
new file; the version travels in every result (``agent.prompt_version``), so evals and replays can
compare results prompt by prompt.
"""

from __future__ import annotations

from importlib import resources


def load_prompt(version: str) -> str:
    return resources.files("agents").joinpath("prompts", f"{version}.md").read_text("utf-8")
