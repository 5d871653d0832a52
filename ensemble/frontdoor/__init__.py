"""The front door: occupancy, selection (pure), rendering of nginx maps, refresh."""
