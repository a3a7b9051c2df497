"""marketo-dynamics-sync: the sync engine, mappings and state store (plain, typed Python)."""
