"""Offline GraphQL explorer (GraphiQL) served at ``GET /graphql`` for browsers.

A browser navigating to the GraphQL endpoint (``Accept`` prefers ``text/html`` and there
is no ``query`` parameter) gets an HTML page that renders GraphiQL full-window against the
same endpoint; API clients keep getting JSON (GraphQL over HTTP).

All assets are vendored under ``gateway/static/explorer/`` (see ``VERSIONS.txt`` there):
the page loads nothing from another host, so it works on a machine without internet.
The bootstrap script is a separate local file (``explorer.js``) that reads the endpoint and
the default query from data-attributes, so the Content-Security-Policy can keep
``script-src 'self'`` (no inline script, no eval).
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from gateway.accept import parse_accept, quality

__all__ = [
    "DEFAULT_QUERY",
    "EXPLORER_CSP",
    "EXPLORER_STATIC_DIR",
    "explorer_help",
    "explorer_page",
    "explorer_routes",
    "wants_explorer",
]

EXPLORER_STATIC_DIR: Path = Path(__file__).resolve().parent / "static" / "explorer"

DEFAULT_STATIC_PREFIX = "/static/explorer"

DEFAULT_QUERY = """\
# Welcome to the hutong GraphQL explorer.
#
# Run a query with Ctrl-Enter or the play button.
# Request headers (e.g. Authorization) go in
# the "Headers" tab below.

{
  __typename
}
"""

# What GraphiQL 4.1 really needs (checked in headless Chromium with CSP violation reports,
# loading the page, running a query with headers and opening the settings dialog):
# scripts, styles, images and fetches from 'self' only; data: fonts (embedded in
# graphiql.min.css); and 'unsafe-inline' styles, because its dialogs (react-remove-scroll)
# inject a <style> element whose content varies, so no hash or nonce can cover it.
# No inline script and no eval: the bootstrap is the local file explorer.js.
_CSP_DIRECTIVES = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "connect-src 'self'",
    "img-src 'self'",
    "font-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
)
EXPLORER_CSP = "; ".join(_CSP_DIRECTIVES)

_HTML_MEDIA = ("text/html", "application/xhtml+xml")
_JSON_MEDIA = ("application/json", "application/graphql-response+json")

_PAGE_TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<link rel="stylesheet" href="{prefix}/graphiql.min.css">
<link rel="stylesheet" href="{prefix}/explorer.css">
</head>
<body>
{help}
<div id="graphiql" data-endpoint="{endpoint}" data-default-query="{default_query}">Loading\u2026</div>
<noscript>The GraphQL explorer needs JavaScript. API clients: POST JSON to {endpoint}.</noscript>
<script src="{prefix}/react.production.min.js"></script>
<script src="{prefix}/react-dom.production.min.js"></script>
<script src="{prefix}/graphiql.min.js"></script>
<script src="{prefix}/explorer.js"></script>
</body>
</html>
"""


# The help strip above GraphiQL (styled in explorer.css). It needs no script: <details> opens and
# closes by itself.

_HELP_HEADERS = """\
{{
  "Authorization": "Bearer {token}",
  "X-Purpose": "{purpose}",
  "X-Acting-User": "{user}",
  "X-Case-Id": "{case}"
}}"""


def explorer_help(request: Request, *, demo: bool) -> str:
    """The help strip: in every mode, where the token and the context headers go; in demo mode
    also how to get a token with the published demo client credentials (never outside demo mode:
    a real deployment's clients are its own)."""
    esc = html.escape
    summary = ("Requests need an access token: put an <code>Authorization: Bearer \u2026</code> header, and for "
               "data queries <code>X-Purpose</code>, <code>X-Acting-User</code> and <code>X-Case-Id</code>, in the "
               "<b>Headers</b> tab below the query editor (as JSON).")
    parts = [f'<details id="hutong-help"{" open" if demo else ""}>', f"<summary>{summary}</summary>"]
    if demo:
        from gateway.auth.demo import DEMO_CLIENTS

        base = str(request.base_url).rstrip("/")
        first = DEMO_CLIENTS[0]
        curl = (f"curl -s -u {first.client_id}:{first.secret} -d grant_type=client_credentials "
                f"{base}/oauth/token")
        parts.append("<p><b>Demo mode.</b> Get a token with a demo client's published credentials (demo mode "
                     "only), then copy its <code>access_token</code>:</p>")
        parts.append(f"<pre>{esc(curl)}</pre>")
        parts.append("<p>and paste into the Headers tab:</p>")
        parts.append("<pre>" + esc(_HELP_HEADERS.format(token="PASTE_THE_ACCESS_TOKEN",
                                                         purpose="subsistence-allowance-review",
                                                         user="official-007", case=_demo_case(request))) + "</pre>")
        rows = "".join(f"<tr><td><code>{esc(c.client_id)}</code></td><td><code>{esc(c.secret)}</code></td>"
                       f"<td>{esc(c.purpose)}</td></tr>" for c in DEMO_CLIENTS)
        parts.append(f"<details><summary>All demo clients (each with its own roles and purposes)</summary>"
                     f"<table>{rows}</table></details>")
    else:
        parts.append("<p>Ask your administrator for client credentials and request a token from this gateway's "
                     "<code>/oauth/token</code> (OAuth 2.0 client credentials). Headers tab example:</p>")
        parts.append("<pre>" + esc(_HELP_HEADERS.format(token="YOUR_ACCESS_TOKEN", purpose="your-declared-purpose",
                                                         user="your-user-id", case="the-case-you-work-on")) + "</pre>")
    parts.append("</details>")
    return "\n".join(parts)


def _demo_case(request: Request) -> str:
    """The demo's showcase case id, when the demo city is built next to the configuration."""
    import json

    settings = _settings_of(request)
    try:
        path = settings.base_dir / "data" / "showcase.json"  # type: ignore[union-attr]
        return str(json.loads(path.read_text(encoding="utf-8"))["case_id"])
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        return "CASE-ID"


def _settings_of(request: Request) -> object | None:
    """The gateway's settings (``app.state.settings``), if the application has any."""
    return getattr(getattr(request.scope.get("app"), "state", None), "settings", None)


def _demo_mode(request: Request) -> bool:
    return getattr(_settings_of(request), "demo", False) is True


def wants_explorer(request: Request) -> bool:
    """True for a browser navigation: a GET whose Accept header prefers text/html over JSON
    (``*/*`` alone, a missing Accept or a JSON Accept all mean an API client, which gets
    JSON). A browser opening a shared ``/graphql?query=...`` link gets the explorer with
    that query in the editor."""
    if request.method != "GET":
        return False
    ranges = parse_accept(request.headers.get("accept", ""))
    if not ranges:
        return False
    html_q = max(quality(ranges, media) for media in _HTML_MEDIA)
    json_q = max(quality(ranges, media) for media in _JSON_MEDIA)
    return html_q > 0 and html_q > json_q


def explorer_page(
    request: Request,
    default_query: str = DEFAULT_QUERY,
    static_prefix: str = DEFAULT_STATIC_PREFIX,
    *,
    title: str = "hutong GraphQL explorer",
    demo: bool | None = None,
) -> HTMLResponse:
    """The GraphiQL page for ``request``; it queries the request's own path (same origin).

    ``default_query`` is shown in the editor when the browser has no saved tabs. Every
    value is HTML-attribute-escaped into the page; no value is placed in script text.
    ``demo`` (default: the application's ``settings.demo``) adds how to get a demo token
    to the help strip above the editor.
    """
    prefix = static_prefix.rstrip("/")
    demo = _demo_mode(request) if demo is None else demo
    page = _PAGE_TEMPLATE.format(
        help=explorer_help(request, demo=demo),
        title=html.escape(title, quote=True),
        prefix=html.escape(prefix, quote=True),
        endpoint=html.escape(request.url.path, quote=True),
        default_query=html.escape(default_query, quote=True),
    )
    return HTMLResponse(
        page,
        headers={
            "Content-Security-Policy": EXPLORER_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "Vary": "Accept",
        },
    )


def explorer_routes(static_prefix: str = DEFAULT_STATIC_PREFIX) -> list:
    """Routes serving the vendored explorer assets under ``static_prefix``."""
    return [
        Mount(
            static_prefix.rstrip("/"),
            app=StaticFiles(directory=EXPLORER_STATIC_DIR),
            name="explorer-static",
        )
    ]
