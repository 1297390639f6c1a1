"""The evaluation that gates a model upgrade: a small query set built from the source, asked of a
version through the encoder (with the model that built it) and the store, as a search would be.

The query set is deterministic: text queries with the class names (payload `class_name`) that
answer them, taken from the source's candidate groups in turn (MNIST: each digit as a word, a
numeral and handwriting; emoji: concept names and specific keywords; folders and CSVs: their class
names), in an order fixed by a hash of the text. The indexer stays torch-free: the encoder embeds
the queries, so the same set measures any model the encoder serves.

The score of a version is the mean over queries of its precision at k *of what is attainable*:
the hits in the top k whose class is accepted, over min(k, items of an accepted class). For MNIST
(a thousand images a digit) this is plain precision@k; for an emoji name (four images, one per
style) it is the share of the four found in the top k, so a perfect model scores 1 everywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clipsearch.encoder_client import EncoderClient
from clipsearch.store import IMAGE_VECTOR, VectorStore

from .sources import QueryCandidate, SourceItem

METRIC = (
    "precision@k of the attainable: accepted hits in the top k / min(k, accepted items), mean over queries"
)
# Texts per EmbedText call when the encoder does not say its limit.
TEXTS_PER_CALL = 64


@dataclass(frozen=True)
class EvalQuery:
    text: str
    accept: tuple[str, ...]  # the class names that answer it
    relevant: int  # items of those classes in the source: the most the top k can hold


@dataclass(frozen=True)
class QuerySet:
    queries: tuple[EvalQuery, ...]
    k: int

    @property
    def digest(self) -> str:
        """Identifies the set: a score recorded for the same digest is comparable."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"k": self.k, "queries": [asdict(query) for query in self.queries]}


def _order(candidate: QueryCandidate) -> str:
    """A fixed, well-spread order: the hash of the text, not the source's (alphabetical) order."""
    return hashlib.sha256(candidate.text.encode()).hexdigest()


def build_query_set(
    groups: Sequence[Sequence[QueryCandidate]], items: Sequence[SourceItem], *, limit: int, k: int
) -> QuerySet | None:
    """Up to `limit` queries, taken from each group in turn; None when the source offers none
    (a CSV without labels), or `limit` is 0."""
    counts = Counter(str(item.payload.get("class_name")) for item in items if "class_name" in item.payload)
    pools = [
        [c for c in sorted(group, key=_order) if sum(counts[name] for name in c.accept) > 0]
        for group in groups
    ]
    chosen: list[EvalQuery] = []
    seen: set[str] = set()
    depth = 0
    while len(chosen) < limit and any(depth < len(pool) for pool in pools):
        for pool in pools:
            if depth < len(pool) and len(chosen) < limit and pool[depth].text not in seen:
                candidate = pool[depth]
                seen.add(candidate.text)
                relevant = sum(counts[name] for name in candidate.accept)
                chosen.append(EvalQuery(candidate.text, candidate.accept, relevant))
        depth += 1
    return QuerySet(tuple(chosen), k) if chosen else None


@dataclass(frozen=True)
class Score:
    """One version's result on a query set."""

    version: str
    fingerprint: str
    model_name: str
    value: float
    recorded: bool = False  # read from the version's manifest, not measured now

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "model_name": self.model_name,
            "score": self.value,
            "recorded": self.recorded,
        }


async def score_version(
    client: EncoderClient,
    store: VectorStore,
    version: str,
    *,
    fingerprint: str,
    model_name: str,
    query_set: QuerySet,
    texts_per_call: int = TEXTS_PER_CALL,
) -> Score:
    """Embed the queries with the model `fingerprint` names and search `version` (the physical
    collection, not the alias) for each, as a text search through the gateway would."""
    texts = [query.text for query in query_set.queries]
    chunks = [texts[start : start + texts_per_call] for start in range(0, len(texts), texts_per_call)]
    vectors = np.concatenate([await client.embed_texts(chunk, model=fingerprint) for chunk in chunks])
    per_query = await asyncio.to_thread(_precision_at_k, store, version, vectors, query_set)
    return Score(version, fingerprint, model_name, round(float(np.mean(per_query)), 6))


def _precision_at_k(
    store: VectorStore, version: str, vectors: np.ndarray, query_set: QuerySet
) -> list[float]:
    scores = []
    for query, vector in zip(query_set.queries, vectors, strict=True):
        hits = store.search(version, vector, using=IMAGE_VECTOR, k=query_set.k)
        accepted = sum(1 for hit in hits if str(hit.payload.get("class_name")) in query.accept)
        scores.append(accepted / min(query_set.k, query.relevant))
    return scores


def recorded_score(info_extra: dict[str, Any], query_set: QuerySet) -> float | None:
    """The score a version recorded when it was published, if it was measured on this query set."""
    evaluation = info_extra.get("evaluation")
    if not isinstance(evaluation, dict) or evaluation.get("digest") != query_set.digest:
        return None
    score = evaluation.get("score")
    return float(score) if isinstance(score, int | float) else None


@dataclass
class Evaluation:
    """What the gate measured and decided, for the summary and the published version's manifest."""

    query_set: QuerySet | None
    candidate: Score | None = None
    live: Score | None = None
    gated: bool = False  # the candidate had to match the live version to be published
    published: bool = True
    reason: str = ""
    seconds: float = 0.0  # the evaluation's own time, both versions

    def manifest(self) -> dict[str, Any]:
        """The `evaluation` entry of the published version's manifest."""
        if self.query_set is None or self.candidate is None:
            return {"metric": METRIC, "score": None, "reason": self.reason}
        return {
            "metric": METRIC,
            **self.query_set.describe(),
            "digest": self.query_set.digest,
            "score": self.candidate.value,
            "compared_with": self.live.describe() if self.live else None,
            "reason": self.reason,
        }

    def summary(self) -> str:
        if self.query_set is None or self.candidate is None:
            return f"  evaluation: none ({self.reason})"
        k = self.query_set.k
        line = (
            f"  evaluation over {len(self.query_set.queries)} queries, precision@{k} of the attainable: "
            f"{self.candidate.version} (model {self.candidate.model_name}) {self.candidate.value:.3f}"
        )
        if self.live is not None:
            recorded = ", as recorded" if self.live.recorded else ""
            line += (
                f" vs live {self.live.version} (model {self.live.model_name}) {self.live.value:.3f}{recorded}"
            )
        verdict = "published" if self.published else "NOT published, dropped"
        return f"{line}: {verdict} ({self.reason}; {self.seconds:.1f} s)"
