"""Consent and legal bases: the terms on which conditional (有条件共享) fields flow.

``model`` (artefacts), ``terms`` (checking a proposed one), ``signing`` (the gateway's
signature), ``store`` (SQLite / PostgreSQL), ``check`` (does a grant cover this value),
``settings`` (the ``[consent]`` section).
"""
