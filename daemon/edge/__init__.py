"""The edge: what faces the client.

ASGI routes of the public port (one table in `public`), the guard (Host/Origin, peer uid,
client keys, limits), socket activation, the OpenAPI description and the dashboard's files.
May import: dialects, routing, recording, accounts and the shared modules (exchange, errors,
asgi, settings, paths). Nothing below imports the edge.
"""
