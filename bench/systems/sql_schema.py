"""The users table the SQL systems share: unique indexes on lower(username), lower(email).

The same fields codx-db stores (codx-junior's avatar, theme, role, github and projects too).
"""

from __future__ import annotations

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS users (
    id text PRIMARY KEY,
    username text NOT NULL,
    email text,
    full_name text NOT NULL DEFAULT '',
    is_active boolean NOT NULL DEFAULT true,
    is_superuser boolean NOT NULL DEFAULT false,
    password_hash text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    avatar text NOT NULL DEFAULT '',
    theme text NOT NULL DEFAULT 'dim',
    role text NOT NULL DEFAULT 'user',
    github text NOT NULL DEFAULT '',
    projects jsonb NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX IF NOT EXISTS users_username_key ON users (lower(username));
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (lower(email));
"""

COLUMNS = (
    "id",
    "username",
    "email",
    "full_name",
    "is_active",
    "is_superuser",
    "created_at",
    "updated_at",
    "avatar",
    "theme",
    "role",
    "github",
    "projects",
)
