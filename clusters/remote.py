"""``tcp://HOST:PORT`` and ``tls://HOST:PORT``: connect to a scheduler that already runs.

TLS settings come from Dask's own security configuration, exactly as ``dask worker`` and
``Client`` read them (``distributed.comm.tls.ca-file``, ``.client.cert``, ``.client.key``, set in
``~/.config/dask/*.yaml`` or as ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE=...``); see the README's
"Clusters" section for a worked example.
"""

from __future__ import annotations

from distconv.errors import DistconvError

# How long to keep retrying an unreachable scheduler; override with dask config
# ``distconv.connect-timeout`` (env DASK_DISTCONV__CONNECT_TIMEOUT=30s).
CONNECT_TIMEOUT = "10s"


def security_for(address: str):
    """The ``distributed.Security`` for ``address``: Dask's TLS config for ``tls://``.

    Raises
    ------
    DistconvError
        For ``tls://`` without a CA file configured (the connection could not be verified).
    """
    from distributed import Security

    security = Security()  # reads distributed.comm.tls.* and require-encryption from config
    if address.startswith("tls://") and not security.tls_ca_file:
        raise DistconvError(
            f"{address} needs TLS settings in dask config: distributed.comm.tls.ca-file, "
            "distributed.comm.tls.client.cert and .client.key (e.g. DASK_DISTRIBUTED__COMM__TLS__"
            "CA_FILE=ca.pem); see the README, section Clusters"
        )
    return security


def connect(address: str):
    """A ``distributed.Client`` connected to the scheduler at ``address``.

    Raises
    ------
    DistconvError
        When the scheduler cannot be reached or the TLS handshake fails (one line).
    """
    import dask.config
    from distributed import Client

    security = security_for(address)
    timeout = dask.config.get("distconv.connect-timeout", default=CONNECT_TIMEOUT)
    try:
        return Client(address, security=security, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DistconvError(f"cannot reach the scheduler at {address} ({reason})") from None
