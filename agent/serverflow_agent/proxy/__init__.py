"""The reverse proxy in front of the apps (nginx) and their certificates (ACME)."""
