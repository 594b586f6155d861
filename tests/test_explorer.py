"""The offline GraphiQL explorer: page negotiation, local assets, CSP and escaping."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.explorer import (
    DEFAULT_QUERY,
    EXPLORER_CSP,
    EXPLORER_STATIC_DIR,
    explorer_page,
    explorer_routes,
    wants_explorer,
)

BROWSER_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
NASTY_QUERY = '# </script><script>alert("x")</script> \' " & <!-- \n{ __typename }\n'

VENDORED = [
    "graphiql.min.js",
    "graphiql.min.css",
    "react.production.min.js",
    "react-dom.production.min.js",
]


def make_app(default_query: str = DEFAULT_QUERY) -> Starlette:
    async def graphql(request: Request):
        if wants_explorer(request):
            return explorer_page(request, default_query=request.query_params.get("query") or default_query)
        return JSONResponse({"data": None, "errors": [{"message": "no schema in this test app"}]})

    return Starlette(routes=[Route("/graphql", graphql, methods=["GET", "POST"]), *explorer_routes()])


@pytest.fixture
def client() -> TestClient:
    return TestClient(make_app())


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []
        self.script_bodies: list[str] = []
        self.root_attrs: dict[str, str | None] | None = None
        self.root_count = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self._in_script = True
            if a.get("src"):
                self.scripts.append(a["src"])
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.stylesheets.append(a["href"])
        if a.get("id") == "graphiql":
            self.root_count += 1
            self.root_attrs = a

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.script_bodies.append(data)


def _parse(page: str) -> _Collector:
    parser = _Collector()
    parser.feed(page)
    parser.close()
    return parser


_URL = re.compile(r"(?i)\bhttps?://[^\s\"'<>]+")


def _foreign_urls(text: str) -> list[str]:
    """Absolute http(s) URLs in ``text`` (the page and the bootstrap must have none)."""
    return [m.group(0) for m in _URL.finditer(text)]


def test_browser_gets_page_with_local_assets_only(client: TestClient) -> None:
    resp = client.get("/graphql", headers={"Accept": BROWSER_ACCEPT})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    page = resp.text
    parsed = _parse(page)
    assert parsed.root_count == 1
    assert parsed.root_attrs is not None
    assert parsed.root_attrs["data-endpoint"] == "/graphql"
    assert parsed.root_attrs["data-default-query"] == DEFAULT_QUERY
    assert parsed.scripts == [
        "/static/explorer/react.production.min.js",
        "/static/explorer/react-dom.production.min.js",
        "/static/explorer/graphiql.min.js",
        "/static/explorer/explorer.js",
    ]
    assert parsed.stylesheets == ["/static/explorer/graphiql.min.css", "/static/explorer/explorer.css"]
    assert parsed.script_bodies == []  # no inline script: CSP script-src stays 'self'
    assert _foreign_urls(page) == []
    for ref in parsed.scripts + parsed.stylesheets:
        assert ref.startswith("/") and not ref.startswith("//"), ref  # same origin
    bootstrap = (EXPLORER_STATIC_DIR / "explorer.js").read_text()
    assert _foreign_urls(bootstrap) == []
    assert "isHeadersEditorEnabled: true" in bootstrap
    assert "shouldPersistHeaders: true" in bootstrap
    assert "application/graphql-response+json, application/json" in bootstrap


def test_every_referenced_asset_is_served(client: TestClient) -> None:
    page = client.get("/graphql", headers={"Accept": BROWSER_ACCEPT}).text
    parsed = _parse(page)
    refs = [(src, "javascript") for src in parsed.scripts] + [(h, "text/css") for h in parsed.stylesheets]
    assert len(refs) == 6
    for url, kind in refs:
        resp = client.get(url)
        assert resp.status_code == 200, url
        assert kind in resp.headers["content-type"], (url, resp.headers["content-type"])
        assert len(resp.content) > 100, url


def test_vendored_files_and_licenses_present() -> None:
    for name in VENDORED:
        assert (EXPLORER_STATIC_DIR / name).is_file(), name
    for lib in ("graphiql", "react", "react-dom"):
        assert (EXPLORER_STATIC_DIR / f"{lib}.LICENSE").is_file(), lib
    versions = (EXPLORER_STATIC_DIR / "VERSIONS.txt").read_text()
    for pkg in ("graphiql@", "react@", "react-dom@", "npm pack"):
        assert pkg in versions
    total = sum(p.stat().st_size for p in EXPLORER_STATIC_DIR.iterdir() if p.is_file())
    assert total < 3 * 1024 * 1024


def test_csp_header(client: TestClient) -> None:
    resp = client.get("/graphql", headers={"Accept": BROWSER_ACCEPT})
    csp = resp.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in (x.strip() for x in csp.split(";")) if d}
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]
    assert "'self'" in directives["style-src"]
    assert directives["frame-ancestors"] == ["'none'"]
    for sources in directives.values():
        assert not any(s.startswith(("http:", "https:", "*")) for s in sources), csp
        assert "'unsafe-eval'" not in sources
    assert resp.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/json"},
        {"Accept": "application/graphql-response+json, application/json;q=0.9"},
        {"Accept": "*/*"},
        {"Accept": ""},
        {"Accept": "text/html;q=0.5, application/json"},
        {"Accept": "text/html;q=0"},
    ],
)
def test_api_clients_get_json(client: TestClient, headers: dict[str, str]) -> None:
    resp = client.get("/graphql", headers=headers)
    assert resp.headers["content-type"].startswith("application/json")
    assert "errors" in resp.json()


def test_shared_query_link_opens_in_the_explorer_and_post_never_gets_page(client: TestClient) -> None:
    resp = client.get("/graphql", params={"query": "{ __typename }"}, headers={"Accept": BROWSER_ACCEPT})
    assert resp.headers["content-type"].startswith("text/html")
    assert 'data-default-query="{ __typename }"' in resp.text
    resp = client.post("/graphql", json={"query": "{ __typename }"}, headers={"Accept": BROWSER_ACCEPT})
    assert resp.headers["content-type"].startswith("application/json")


def test_html_preferred_over_json_by_q() -> None:
    app = make_app()
    with TestClient(app) as c:
        resp = c.get("/graphql", headers={"Accept": "application/json;q=0.5, text/*"})
        assert resp.headers["content-type"].startswith("text/html")


def test_default_query_is_escaped() -> None:
    client = TestClient(make_app(default_query=NASTY_QUERY))
    page = client.get("/graphql", headers={"Accept": BROWSER_ACCEPT}).text
    assert "</script><script>" not in page
    assert 'alert("x")' not in page
    parsed = _parse(page)
    assert parsed.root_count == 1
    assert parsed.root_attrs is not None
    assert parsed.root_attrs["data-default-query"] == NASTY_QUERY  # round-trips exactly
    assert parsed.script_bodies == []
    assert len(parsed.scripts) == 4


def test_custom_static_prefix() -> None:
    async def graphql(request: Request):
        return explorer_page(request, static_prefix="/assets/gql/")

    app = Starlette(routes=[Route("/api/graphql", graphql), *explorer_routes("/assets/gql")])
    client = TestClient(app)
    page = client.get("/api/graphql").text
    parsed = _parse(page)
    assert parsed.root_attrs is not None
    assert parsed.root_attrs["data-endpoint"] == "/api/graphql"
    assert all(src.startswith("/assets/gql/") for src in parsed.scripts + parsed.stylesheets)
    for url in parsed.scripts + parsed.stylesheets:
        assert client.get(url).status_code == 200


# --- help on the page: where the token and headers go; in demo mode, how to get a token -------------------

HEADER_NOTE = ("Requests need an access token: put an <code>Authorization: Bearer \u2026</code> header, and for data "
               "queries <code>X-Purpose</code>, <code>X-Acting-User</code> and <code>X-Case-Id</code>, in the "
               "<b>Headers</b> tab below the query editor (as JSON).")


def _demo_app(tmp_path, demo: bool) -> Starlette:
    from types import SimpleNamespace

    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "showcase.json").write_text('{"case_id": "DB-2026-0042"}', encoding="utf-8")
    app = make_app()
    app.state.settings = SimpleNamespace(demo=demo, base_dir=tmp_path)
    return app


def test_every_explorer_says_where_the_token_and_context_headers_go(client: TestClient) -> None:
    page = client.get("/graphql", headers={"Accept": BROWSER_ACCEPT}).text
    assert HEADER_NOTE in page
    assert '<details id="hutong-help">' in page  # closed: a one-line note above the editor
    assert "/oauth/token" in page and "&quot;X-Purpose&quot;: &quot;your-declared-purpose&quot;" in page
    # Outside demo mode nothing about the demo's published credentials.
    assert "demo-secret" not in page and "street-office-app" not in page and "curl" not in page
    parsed = _parse(page)
    assert parsed.script_bodies == [] and len(parsed.scripts) == 4  # still no inline script: CSP unchanged
    assert _foreign_urls(page) == []


def test_demo_explorer_shows_how_to_get_a_token(tmp_path) -> None:
    from gateway.auth.demo import DEMO_CLIENTS

    client = TestClient(_demo_app(tmp_path, demo=True))
    resp = client.get("/graphql", headers={"Accept": BROWSER_ACCEPT})
    page = resp.text
    assert HEADER_NOTE in page
    assert '<details id="hutong-help" open>' in page
    assert ("curl -s -u street-office-app:street-office-demo-secret -d grant_type=client_credentials "
            "http://testserver/oauth/token") in page
    assert "&quot;Authorization&quot;: &quot;Bearer PASTE_THE_ACCESS_TOKEN&quot;" in page
    assert "&quot;X-Purpose&quot;: &quot;subsistence-allowance-review&quot;" in page
    assert "&quot;X-Case-Id&quot;: &quot;DB-2026-0042&quot;" in page  # the demo's showcase case
    for c in DEMO_CLIENTS:
        assert f"<code>{c.client_id}</code></td><td><code>{c.secret}</code>" in page
    # The only absolute URL is this gateway's own token endpoint (text to copy, nothing loaded from it).
    assert _foreign_urls(page) == ["http://testserver/oauth/token"]
    assert _parse(page).script_bodies == []
    assert resp.headers["content-security-policy"] == EXPLORER_CSP


def test_demo_help_is_only_for_demo_mode(tmp_path) -> None:
    page = TestClient(_demo_app(tmp_path, demo=False)).get("/graphql", headers={"Accept": BROWSER_ACCEPT}).text
    assert HEADER_NOTE in page and "demo-secret" not in page


async def test_the_gateway_explorer_in_demo_mode_carries_the_token_help(make_settings) -> None:
    from tests.conftest import served

    async with served(make_settings()) as (client, _):
        page = (await client.get("/graphql", headers={"Accept": BROWSER_ACCEPT, "Authorization": ""})).text
    assert HEADER_NOTE in page
    assert "curl -s -u street-office-app:street-office-demo-secret" in page and "http://gw/oauth/token" in page
