"""Text queries to measure a checkpoint with: templated and free-form phrasings of each class."""

from __future__ import annotations

from collections.abc import Sequence

from training.data import label_forms, with_articles

# Query phrasings for precision@10. "{}" is a singular form (word or numeral), "{p}" a plural one.
# The free-form ones are deliberately not among the training templates (training/data.py).
TEMPLATE_QUERIES = ["a handwritten digit {}", "the number {}", "{}"]
FREE_FORM_QUERIES = [
    "show me {p}",
    "a scribbled {}",
    "{p} please",
    "a sloppy {}",
    "i want to see a {}",
    "something that looks like a {}",
]


def query_set(class_names: Sequence[str], numerals: bool) -> list[tuple[str, int, str]]:
    """(query, label, kind) for every class: templated and free-form phrasings, words and numerals."""
    queries = []
    for label in range(len(class_names)):
        singular, plural = label_forms(class_names, numerals, label)
        for kind, templates in (("template", TEMPLATE_QUERIES), ("free-form", FREE_FORM_QUERIES)):
            for template in templates:
                forms = plural if "{p}" in template else singular
                for form in forms:
                    text = template.format(p=form) if "{p}" in template else template.format(form)
                    queries.append((with_articles(text), label, kind))
    return queries
