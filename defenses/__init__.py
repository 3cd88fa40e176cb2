"""Built-in defense plugins, one per module (registered with @register_defense)."""
