"""Typed errors raised by the indexer (mapped to HTTP 4xx/5xx by the service in one place)."""

from __future__ import annotations


class IndexerError(Exception):
    """Base class of every error the indexer raises on purpose."""


class InvalidVectors(IndexerError, ValueError):
    """Vectors or segments passed to the index are malformed (shape, dtype, NaN, empty, mismatch)."""


class RecoveryError(IndexerError):
    """Durable files exist but none of them could be recovered; refusing to start empty."""


class IndexClosed(IndexerError):
    """The index was used after `close()`."""


class IndexLocked(IndexerError):
    """Another process (or another `VideoIndex` in this one) has this index directory open."""


class IncompatibleIndex(IndexerError):
    """The stored index cannot serve this configuration (another vector size, a missing field)."""


class DamagedIndex(IndexerError):
    """A file of the index (its generation pointer, its metadata) holds what the index never writes: edited
    or damaged. The message names the file."""
