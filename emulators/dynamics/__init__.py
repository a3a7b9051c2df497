"""Local emulator of the Dynamics 365 (Dataverse) Web API v9.2 and the Entra ID token endpoint."""
