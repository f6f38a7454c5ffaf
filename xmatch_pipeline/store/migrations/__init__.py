"""Alembic's script directory for the pipeline's tables: ``env.py`` and numbered revisions.

Applied by :func:`xmatch_pipeline.store.schema.ensure_schema` at start; see ``versions/`` for
how a revision is written.
"""
