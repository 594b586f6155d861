"""HTTP content negotiation (RFC 9110 §12.5.1): which media type a client's Accept header prefers."""

from __future__ import annotations

__all__ = ["best_of", "parse_accept", "quality"]


def parse_accept(header: str) -> list[tuple[str, float]]:
    """Parse an Accept header into ``(media_range, q)`` pairs (lower-cased, params dropped)."""
    ranges: list[tuple[str, float]] = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        if not media or "/" not in media:
            continue
        q = 1.0
        for param in pieces[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                q = min(max(q, 0.0), 1.0)
        ranges.append((media, q))
    return ranges


def quality(ranges: list[tuple[str, float]], media_type: str) -> float:
    """The q of ``media_type`` under the most specific matching range (RFC 9110 12.5.1)."""
    main = media_type.split("/", 1)[0]
    best_specificity = -1
    best_q = 0.0
    for media, q in ranges:
        if media == media_type:
            specificity = 2
        elif media == f"{main}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity or (specificity == best_specificity and q > best_q):
            best_specificity, best_q = specificity, q
    return best_q


def best_of(header: str | None, offers: tuple[str, ...]) -> str | None:
    """The offer the client prefers (the first of equals), or None if it accepts none of them.
    A missing or empty Accept header accepts the first offer."""
    if not header:
        return offers[0]
    ranges = parse_accept(header)
    scored = [(quality(ranges, offer), -i, offer) for i, offer in enumerate(offers)]
    q, _, offer = max(scored)
    return offer if q > 0 else None
