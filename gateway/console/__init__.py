"""The web console at ``/console``: server-rendered pages for people, not programs.

Policy administrators, auditors and data owners sign in (local accounts, or an external
OpenID Connect provider) and work through pages that call the same services as the GraphQL
API: the same validator refuses a bad rule, the same audit log records every change.

``settings`` (the ``[console]`` section), ``accounts`` (people and their password hashes),
``security`` (sessions, roles, CSRF), ``app`` (the routes, templates, security headers),
``pages/`` (one module per page: catalogue, policy editor, sharing requests, audit viewer,
scoreboard). Templates and the one script they use (htmx) are served from the package: the
console works on a machine without internet.
"""
