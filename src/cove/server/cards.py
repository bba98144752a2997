"""Model and dataset cards: README.md YAML front matter and the facts derived from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

try:  # the C loader is several times faster; fall back where libyaml is missing
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class CardError(ValueError):
    pass


def front_matter(text: str) -> dict | None:
    """The YAML block between the leading `---` lines, or None when there is none."""
    if not text.startswith("---"):
        return None
    lines = text.splitlines()
    if lines[0].strip() != "---":
        return None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            try:
                data = yaml.load("\n".join(lines[1:i]), Loader=_Loader)
            except yaml.YAMLError as e:
                raise CardError(f"invalid YAML in README.md metadata: {e}") from e
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise CardError("README.md metadata must be a YAML mapping")
            return data
    return None


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


@dataclass
class CardFacts:
    card_data: dict | None = None
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = None
    library_name: str | None = None


def card_facts(readme: bytes | None, repo_type: str) -> CardFacts:
    """What the Hub derives from a card: cardData, tags, pipeline_tag, library_name."""
    if readme is None:
        return CardFacts()
    try:
        data = front_matter(readme.decode("utf-8", errors="replace"))
    except CardError:
        return CardFacts()  # a broken card still leaves the repository usable
    if not data:
        return CardFacts(card_data=data)
    tags: list[str] = []

    def add(tag: str) -> None:
        if tag and tag not in tags:
            tags.append(tag)

    library = data.get("library_name")
    pipeline = data.get("pipeline_tag")
    for t in _as_list(data.get("tags")):
        add(t)
    if library:
        add(str(library))
    if pipeline and repo_type == "model":
        add(str(pipeline))
    for cat in _as_list(data.get("task_categories")):
        add(f"task_categories:{cat}")
    for lic in _as_list(data.get("license")):
        add(f"license:{lic}")
    for ds in _as_list(data.get("datasets")):
        add(f"dataset:{ds}")
    for lang in _as_list(data.get("language")):
        add(lang)
        add(f"language:{lang}")
    for base in _as_list(data.get("base_model")):
        add(f"base_model:{base}")
    return CardFacts(
        card_data=data,
        tags=tags,
        pipeline_tag=str(pipeline) if pipeline else None,
        library_name=str(library) if library else None,
    )
