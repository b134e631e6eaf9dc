"""Settings, domain errors and logging shared by every ftserve package."""
