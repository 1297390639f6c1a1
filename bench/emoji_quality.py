"""Emoji search quality through the public HTTP API of a running gateway (the demo's, say).

    python -m bench.emoji_quality --gateway http://localhost:8080 [--collection emoji]
        [--style twitter --emoji-dir DIR]

Three query sets, none of them trained on:
  free-form text: training/emoji_queries.py (60 phrasings that are not labels, "a cup of tea"),
                  POST /api/v1/search/text; the figure: an accepted concept in the top 5 (and 10);
  drawings:       training/emoji_sketches.py (19 shapes drawn with 3 pens on a transparent canvas,
                  as on the page), POST /api/v1/search/sketch; an accepted concept first, in the top 10;
  pictures in another style (--style): every image of that style in the emoji directory, POST
                  /api/v1/search/image; the right concept first, in the top 10. Meaningful only when
                  the collection was indexed without that style (the script says when it was not).

A hit is right when its payload's `class_name` is an accepted label. Prints a table; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.http_load import post_politely
from clipsearch.datasets import DatasetError, read_emoji
from training.emoji_queries import FREE_FORM_QUERIES
from training.emoji_sketches import drawn_sketches

TARGETS = {
    "free-form text: accepted concept in the top 5": 0.85,
    "drawings: accepted concept in the top 10": 0.60,
    "another style: right concept first": 0.60,
    "another style: right concept in the top 10": 0.85,
}


@dataclass(frozen=True)
class Query:
    name: str
    accepted: frozenset[str]
    send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Ranks:
    """Per query: the rank (0-based) of the first accepted hit in the top 10, or None."""

    ranks: list[int | None]

    def within(self, k: int) -> float:
        return sum(1 for rank in self.ranks if rank is not None and rank < k) / max(len(self.ranks), 1)


def text_queries(collection: str) -> list[Query]:
    def send(text: str) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
        body = {"query": text, "k": 10, "collection": collection}
        return lambda http: post_politely(http, "/api/v1/search/text", json=body)

    return [Query(text, frozenset(ok), send(text)) for text, ok in FREE_FORM_QUERIES.items()]


def upload(
    path: str, data: bytes, collection: str
) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    form = {"k": "10", "collection": collection}
    return lambda http: post_politely(http, path, files={"file": ("query.png", data, "image/png")}, data=form)


def drawing_queries(collection: str) -> list[Query]:
    return [
        Query(f"{name} (pen {pen})", frozenset(ok), upload("/api/v1/search/sketch", png, collection))
        for name, pen, png, ok in drawn_sketches()
    ]


def style_queries(emoji_dir: Path | None, style: str, collection: str) -> list[Query]:
    found = read_emoji(emoji_dir, styles=[style])
    return [
        Query(
            item.label,
            frozenset([item.label]),
            upload("/api/v1/search/image", item.image_path.read_bytes(), collection),
        )
        for item in found.items
    ]


async def measure(http: httpx.AsyncClient, queries: Sequence[Query], concurrency: int) -> Ranks:
    limit = asyncio.Semaphore(concurrency)

    async def rank(query: Query) -> int | None:
        async with limit:
            response = await query.send(http)
        if response.status_code != 200:
            raise SystemExit(f"{query.name!r}: HTTP {response.status_code} {response.text[:300]}")
        labels = [hit["payload"].get("class_name") for hit in response.json()["hits"]]
        return next((i for i, label in enumerate(labels) if label in query.accepted), None)

    return Ranks(list(await asyncio.gather(*(rank(q) for q in queries))))


async def run(args: argparse.Namespace) -> int:
    async with httpx.AsyncClient(base_url=args.gateway, timeout=120) as http:
        listed: dict[str, Any] = (await http.get("/api/v1/collections")).json()
        entry = next((c for c in listed["collections"] if c["name"] == args.collection), None)
        if entry is None:
            print(f"the gateway serves no collection {args.collection!r}", file=sys.stderr)
            return 2
        print(
            f"{args.collection}: {entry['points']} images, model {entry['model']} ({entry['fingerprint'][:12]})"
        )
        rows: list[tuple[str, float, int]] = []
        text = await measure(http, text_queries(args.collection), args.concurrency)
        rows += [
            ("free-form text: accepted concept in the top 5", text.within(5), len(text.ranks)),
            ("free-form text: accepted concept in the top 10", text.within(10), len(text.ranks)),
        ]
        drawn = await measure(http, drawing_queries(args.collection), args.concurrency)
        rows += [
            ("drawings: accepted concept first", drawn.within(1), len(drawn.ranks)),
            ("drawings: accepted concept in the top 10", drawn.within(10), len(drawn.ranks)),
        ]
        if args.style:
            styles = (entry.get("filter_fields") or {}).get("style") or []
            if args.style in styles:
                print(f"note: the collection holds {args.style} images: not a style it lacks")
            try:
                queries = style_queries(args.emoji_dir, args.style, args.collection)
            except DatasetError as exc:
                print(f"--style: {exc}", file=sys.stderr)
                return 2
            pictures = await measure(http, queries[: args.limit], args.concurrency)
            rows += [
                ("another style: right concept first", pictures.within(1), len(pictures.ranks)),
                ("another style: right concept in the top 10", pictures.within(10), len(pictures.ranks)),
            ]
    print(f"\n{'measure':50} {'queries':>7} {'value':>7}  target")
    for name, value, count in rows:
        target = TARGETS.get(name)
        verdict = "" if target is None else f">= {target:.0%}: {'met' if value >= target else 'missed'}"
        print(f"{name:50} {count:7d} {value:7.1%}  {verdict}")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.emoji_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="the gateway's base URL")
    parser.add_argument("--collection", default="emoji")
    parser.add_argument("--style", help="query with every image of this style (google, twitter, ...)")
    parser.add_argument("--emoji-dir", type=Path, help="the emoji directory (default: $EMOJI_DIR)")
    parser.add_argument("--limit", type=int, help="at most this many style pictures")
    parser.add_argument("--concurrency", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
