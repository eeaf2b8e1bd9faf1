"""The PostgreSQL store: asyncpg, SQL in .sql files, numbered migrations."""
