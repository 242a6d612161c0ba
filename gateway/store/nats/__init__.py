"""The NATS JetStream store (`GATEWAY_STORE=nats`): session logs in one stream, replicas stateless.

    layout.py   subjects, message headers, the stream's configuration (pure)
    conn.py     the connection: direct gets, conditional publishes, purges; errors -> 503
    log.py      NatsLog: one session's log as a virtual byte space over its messages
    store.py    NatsStore: opening, caching and evicting logs; change notices
"""
