"""Everything PostgreSQL-specific; imported only when the postgres backend is used."""
