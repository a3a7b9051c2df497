"""Local emulators of the Marketo REST API, the Dynamics 365 Web API and Entra ID (issue 4)."""
