"""Every TLS context Pollen makes: the ports it serves and the connections it opens.

One home so each side is configured one way: HTTP/1.1 offered by ALPN (h11 speaks nothing
else, and a client that negotiated h2 would send bytes we cannot read), the system's defaults
for protocol versions and ciphers, and mutual TLS only where both ends are our own nodes (the
P2P port, when ``p2p.tls.ca`` is set). The server under a port is unaware of TLS: these
contexts are handed to `agent.http.server.open_listeners` and `agent.http.client.HttpClient`.
"""

from __future__ import annotations

import ssl

ALPN = ["http/1.1"]


def server_ssl_context(cert: str, key: str, *, client_ca: str = "") -> ssl.SSLContext:
    """Serve with the certificate chain in `cert` and its key. With `client_ca`, a client must
    show a certificate that CA signed (peers on the P2P port), else the handshake fails."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(ALPN)
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def make_client_ssl_context(
    ca_file: str | None, *, cert: str = "", key: str = ""
) -> ssl.SSLContext:
    """Trust the system CAs plus `ca_file` (``upstreamCAFile``, the cluster's CA, the P2P CA).
    With `cert`, show that certificate (and `key`) to servers that ask for one: a node
    calling another node's P2P port under mutual TLS."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    context.set_alpn_protocols(ALPN)
    if cert:
        context.load_cert_chain(cert, key)
    return context
