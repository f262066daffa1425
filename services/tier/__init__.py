"""The tier service."""
