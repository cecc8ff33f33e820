"""Operations: what `status`, `/health` and `/metrics` report, read from the database."""
