"""The north-south gateway: an HAProxy run by Ballast, configured from the registry like the sidecars."""
