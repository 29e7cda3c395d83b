"""Versioned prompt files: ``agents/prompts/<name>.v<N>.md``.

Prompts live in files, not inline strings, so a change is a reviewable diff and a new version is a
new file; the version travels in every result (``agent.prompt_version``), so evals and replays can
compare results prompt by prompt.
"""

from __future__ import annotations

from importlib import resources

from schemas.errors import ConfigError


def prompt_versions() -> list[str]:
    """Every prompt version shipped, e.g. ``ticket_triage.v3``."""
    folder = resources.files("agents").joinpath("prompts")
    return sorted(p.name[:-3] for p in folder.iterdir() if p.name.endswith(".md"))


def load_prompt(version: str) -> str:
    """The text of prompt ``version``; a version that does not exist is a configuration error
    (a typo in ``SLUICE_PROMPT_VERSIONS`` or ``--prompt-version`` must not start a worker)."""
    path = resources.files("agents").joinpath("prompts", f"{version}.md")
    if "/" in version or not path.is_file():
        raise ConfigError(f"no prompt {version!r}; shipped: {', '.join(prompt_versions())}")
    return path.read_text("utf-8")
