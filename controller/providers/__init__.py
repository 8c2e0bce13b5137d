"""Where machines come from: one module per provider, all behind ``Provider``."""
