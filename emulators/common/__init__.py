"""Pieces both emulators share: TLS certificates, the server runner, the credentials they accept."""
