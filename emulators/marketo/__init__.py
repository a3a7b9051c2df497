"""Local emulator of the Adobe Marketo Engage REST API (identity, lead database, bulk)."""
