"""Providers: where a fleet's hosts come from (see base.Provider)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ensemble.providers.base import Provider
    from ensemble.spec import FleetSpec


def get_provider(spec: FleetSpec) -> Provider:
    """The provider the spec names, imported only when used (the SDK is heavy)."""
    if spec.provider.kind == "local":
        from ensemble.providers.local import LocalProvider

        return LocalProvider(spec)
    from ensemble.providers.scaleway import ScalewayProvider

    return ScalewayProvider(spec)
