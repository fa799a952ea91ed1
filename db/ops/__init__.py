"""Operations on a whole database: copy, backup, restore, pack, verify, check, import."""
