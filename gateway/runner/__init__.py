"""The runner proxy: runs started through the gateway, interrupts, capabilities, and agent status."""
