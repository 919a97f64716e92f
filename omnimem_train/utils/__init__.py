"""Small shared helpers with no model or media knowledge."""
