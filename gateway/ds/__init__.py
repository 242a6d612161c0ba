"""Durable Streams: the open HTTP protocol of append-only, resumable streams, over the gateway's store.

    protocol.py  offsets, header values, cursors, ETags, producer rules (pure)
    records.py   request bodies into log lines and log lines into response bodies (pure)
    meta.py      a stream's configuration and writer state, one JSON line of its meta log (pure)
    streams.py   streams on the store: create, append, close, fork, delete, read, wait
"""
