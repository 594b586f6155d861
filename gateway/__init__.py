"""The gateway: HTTP app, authentication, schema, planning, execution, audit, CLI."""
