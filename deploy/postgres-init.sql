-- Dagster's run storage lives beside the pipeline's tables, in its own database.
CREATE DATABASE dagster OWNER xmatch;
\connect xmatch
CREATE EXTENSION IF NOT EXISTS btree_gist;
