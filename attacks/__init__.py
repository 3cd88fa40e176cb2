"""Built-in attack plugins, one per module (registered with @register_attack)."""
