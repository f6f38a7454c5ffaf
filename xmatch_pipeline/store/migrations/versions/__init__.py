"""The numbered revisions, ``NNNN_what.py``, each ``down_revision`` the one before.

To change the schema (e.g. a column, a catalog's own table):

1. change ``store/tables.py`` (what the code reads and writes);
2. copy ``0001_initial_schema.py``'s header into ``NNNN_what.py`` with the next number:
   ``revision = "0002"``, ``down_revision = "0001"``, and an ``upgrade()`` made of Alembic
   operations (``op.add_column("xmatch", sa.Column("release", sa.Text, nullable=True))``,
   ``op.create_table(...)``, ``op.execute("UPDATE ...")`` to fill a new column). Write the
   tables out in the revision, never import them from ``tables.py``: a revision is frozen;
3. run ``test_store_migrations``: it upgrades an empty database and fails while the result
   differs from ``tables.py``, and it upgrades a database with rows, which must keep them.

Every process applies the new revision when it starts (``ensure_schema``), one at a time
under the schema's advisory lock; a database already there is left alone. An older
deployment meeting the newer revision stops with an error saying so. There is no
``downgrade``: restore a backup instead.
"""
