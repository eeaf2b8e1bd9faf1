"""The server's TLS: its certificate and key, and the CA of client certificates when those are
required (mTLS). The files are read again when they change: gRPC asks before each new
connection's handshake, and a changed modification time or size loads them anew (a
certificate renewed by cert-manager or a sidecar is served without a restart). Files that do
not load (half written) keep the previous ones in use."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TlsError(Exception):
    """A certificate, key or CA file cannot be used; the message names it."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"the {what} {path} holds no PEM block (-----BEGIN …)")
    return data


class CertificateFiles:
    """The server's certificate chain, key and optional client CA, reloaded when they change."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self._files = [(cert, "TLS certificate"), (key, "TLS key")]
        if client_ca is not None:
            self._files.append((client_ca, "client CA"))
        self.require_client_certificates = client_ca is not None
        self._stamp = self._stamps()
        self._config = self._load()

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path, _ in self._files:
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        blobs = [_read(path, what) for path, what in self._files]
        return grpc.ssl_server_certificate_configuration(
            [(blobs[1], blobs[0])], root_certificates=blobs[2] if len(blobs) > 2 else None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed since the last load, else None."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return None
        try:
            config = self._load()
        except TlsError as exc:
            log.warning("keeping the TLS files in use: %s", exc)
            return None
        self._stamp = stamp
        self._config = config
        log.info("reloaded the TLS certificate", extra={"file": str(self._files[0][0])})
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config,
            self.fetch,  # type: ignore[arg-type]  # None means "unchanged" (gRPC's docs)
            require_client_authentication=self.require_client_certificates,
        )
