"""The catalogue: departments, sources, datasets and fields, and the terms they are shared on."""
