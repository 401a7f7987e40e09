"""drca model package."""

from pathlib import Path

#: The checkpoint shipped inside this package (the service's default; `drca train shipped` rebuilds it).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "drca-lite0"
