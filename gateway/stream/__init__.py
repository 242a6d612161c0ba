"""Reading logs for clients: the replay-then-live reader, wire encodings, and the pump between them."""
